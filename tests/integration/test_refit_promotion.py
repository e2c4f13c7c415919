"""Refits over an existing champion, on the real ratings, read back from MLflow.

One registered model of its own (``hal-reward-refit-test``) takes, in order: a weak first fit
(t01 only: paired accuracy about 0.52 on GPT-5-mini's check set), which becomes the champion
because none exists; a full HAL32Q refit, which beats it (about 0.79) and takes the alias; the
weak fit again, which loses and is registered as challenger only; and a refit whose check set
is broken, which fails before anything is registered.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from flows.fit_reward import FitRewardParams, fit_reward
from tasks.registry import alias_holder

pytestmark = pytest.mark.integration

NAME = "hal-reward-refit-test"
FAST = {"reward": {"paper_cv_seeds": [57]}, "stability": {"n_bootstraps": 5}}
WEAK = ["t01"]


def refit(**overrides) -> object:
    return fit_reward(FitRewardParams.model_validate({"register_as": NAME, **FAST, **overrides}))


@pytest.fixture(scope="module")
def refits(hal_home, data_dir):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HAL_HOME", str(hal_home))
        patch.setenv("HAL_DATA_DIR", str(data_dir))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("HAL_TRACKING_URI", raising=False)
        steps = {"first": {"trait_ids": WEAK}, "wins": {}, "loses": {"trait_ids": WEAK}}
        results, holders = {}, {}
        for step, overrides in steps.items():
            results[step] = refit(**overrides)
            holders[step] = (alias_holder(NAME, "champion"), alias_holder(NAME, "challenger"))
        yield results, holders


def version_of(number: str):
    return MlflowClient().get_model_version(NAME, number)


def test_the_first_fit_becomes_champion_as_none_exists(refits, settings):
    mlflow.set_tracking_uri(settings.resolved_tracking_uri())
    results, holders = refits
    first = results["first"]
    assert holders["first"] == ("1", "1")
    assert first.registered_version == "1"
    assert first.promotion.promote and first.promotion.reason == "no champion yet"
    assert first.promotion.champion_version is None
    assert version_of("1").tags["promotion"].startswith("promoted to @champion")


def test_a_better_refit_over_an_existing_champion_takes_the_alias(refits, settings):
    mlflow.set_tracking_uri(settings.resolved_tracking_uri())
    results, holders = refits
    wins = results["wins"]
    assert holders["wins"] == ("2", "2")  # (@champion, @challenger)
    assert wins.registered_version == "2"
    promotion = wins.promotion
    assert promotion.promote and promotion.champion_version == "1"
    assert promotion.challenger_paired_accuracy > promotion.champion_paired_accuracy + 0.2
    assert promotion.champion_paired_accuracy == pytest.approx(0.524, abs=0.01)
    assert version_of("2").run_id == wins.run_id
    assert (
        version_of("2")
        .tags["promotion"]
        .startswith("promoted to @champion: challenger paired accuracy")
    )
    assert MlflowClient().get_run(wins.run_id).data.tags["hal.promotion"] == (
        f"{NAME} v2 promoted to @champion"
    )


def test_a_worse_refit_is_challenger_only_and_the_reason_is_recorded(refits, settings, tmp_path):
    mlflow.set_tracking_uri(settings.resolved_tracking_uri())
    results, holders = refits
    loses = results["loses"]
    assert holders["loses"] == ("2", "3")
    assert loses.registered_version == "3"
    promotion = loses.promotion
    assert not promotion.promote and promotion.champion_version == "2"
    assert "is worse than the champion's" in promotion.reason
    assert "(v2) on ratings32_gpt-5-mini.csv@" in promotion.reason
    tag = version_of("3").tags["promotion"]
    assert tag == f"kept v2 as @champion: {promotion.reason}"
    client = MlflowClient()
    path = client.download_artifacts(loses.run_id, "promotion.json", str(tmp_path))
    recorded = json.loads(Path(path).read_text())
    assert recorded["version"] == "3" and recorded["promote"] is False
    assert recorded["reason"] == promotion.reason and recorded["champion_version"] == "2"
    run = client.get_run(loses.run_id)
    assert run.data.tags["hal.promotion"] == f"{NAME} v3 kept v2 as @champion"
    # the experiment of a refit started outside the pipeline: the stage's own setting
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == settings.experiment_reward


def test_a_failed_check_leaves_the_registry_as_it_was(refits, settings, tmp_path):
    mlflow.set_tracking_uri(settings.resolved_tracking_uri())
    client = MlflowClient()
    before = sorted(int(v.version) for v in client.search_model_versions(f"name = '{NAME}'"))
    assert before == [1, 2, 3]
    broken = pd.read_csv(settings.data_path("turing/ratings32_gpt-5-mini.csv"))
    broken.loc[7, "likert_evaluation_A"] = "[1, 2, 3]"  # 3 ratings where HAL32Q has 32 traits
    path = tmp_path / "ratings32_broken-check.csv"
    broken.to_csv(path, index=False)
    started = int(time.time() * 1000)
    with pytest.raises(ValueError, match="row 8: likert_evaluation_A has 3 ratings"):
        refit(check_ratings_file=str(path), cross_judge_files=[])
    after = sorted(int(v.version) for v in client.search_model_versions(f"name = '{NAME}'"))
    assert after == before
    assert (alias_holder(NAME, "champion"), alias_holder(NAME, "challenger")) == ("2", "3")
    (failed,) = client.search_runs(
        [client.get_experiment_by_name(settings.experiment_reward).experiment_id],
        filter_string=f"attributes.run_name = 'fit_reward' AND attributes.start_time >= {started}",
    )
    assert failed.info.status == "FAILED"  # fitted and saved, then the check failed
    listed = {a.path for a in client.list_artifacts(failed.info.run_id)}
    assert "reward.json" in listed and "promotion.json" not in listed
