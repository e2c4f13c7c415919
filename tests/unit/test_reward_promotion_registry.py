"""The reward's registry steps on a throwaway MLflow store: versions come back as strings, the
check over an existing champion decides without touching the registry, a retried registration
keeps one version per run."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from hal_core.questionnaire import Questionnaire, Trait
from hal_core.reward import HLReward
from hal_core.reward_promotion import RewardPromotion
from hal_core.settings import HalSettings
from tasks.registry import alias_holder, run_version
from tasks.reward import check_reward, register_reward

NAME = "hal-reward-unit"
REFERENCE = Questionnaire(
    name="two-traits", traits=(Trait(id="t01", text="Types fast."), Trait(id="t02", text="Noise."))
)
GOOD = HLReward(weights={"t01": 1.0}, bias=0.0)  # humans rate high on t01: paired accuracy 1
NOISY = HLReward(weights={"t02": 1.0}, bias=0.0)  # t02 ranks the AI higher in half the games


def check_table(path):
    """A Turing ratings table in the published layout: 4 games, lists follow REFERENCE."""
    rows = []
    for game in range(4):
        human, ai = ([4, 1], [2, 4]) if game < 2 else ([4, 5], [2, 1])
        side = "A" if game % 2 else "B"
        lists = {side: human, "B" if side == "A" else "A": ai}
        rows.append({"game_id": game, "who_is_human": side,
                     "likert_evaluation_A": str(lists["A"]),
                     "likert_evaluation_B": str(lists["B"])})  # fmt: skip
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture()
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment("reward", artifact_location=(tmp_path / "a").as_uri())
    yield HalSettings(home=tmp_path / "home", tracking_uri=uri), experiment
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def registered_run(experiment, reward, folder):
    folder.mkdir(parents=True, exist_ok=True)
    with mlflow.start_run(experiment_id=experiment) as run:
        run_id = run.info.run_id
    return run_id, register_reward.fn(run_id, reward, reward.save(folder / "r.json"), NAME)


def test_versions_read_from_the_registry_are_strings(store, tmp_path):
    _, experiment = store
    assert alias_holder(NAME, "champion") is None  # no model yet
    run_id, version = registered_run(experiment, NOISY, tmp_path)
    assert version == "1"
    assert alias_holder(NAME, "challenger") == "1"
    assert alias_holder(NAME, "champion") is None  # the model exists, the alias does not
    assert run_version(NAME, run_id) == "1"
    with pytest.raises(ValidationError, match="champion_version"):
        RewardPromotion(promote=True, reason="", check_set="c", check_version="v",
                        challenger_paired_accuracy=None, champion_paired_accuracy=None,
                        champion_version=1)  # fmt: skip


def test_check_over_an_existing_champion_decides_and_leaves_the_registry_as_it_was(store, tmp_path):
    settings, experiment = store
    client = MlflowClient()
    check = check_table(tmp_path / "check.csv")
    _, noisy = registered_run(experiment, NOISY, tmp_path / "noisy")
    client.set_registered_model_alias(NAME, "champion", noisy)

    wins = check_reward.fn(GOOD, NAME, "champion", check, REFERENCE, settings)
    assert wins.promote and wins.champion_version == "1"
    assert wins.challenger_paired_accuracy == pytest.approx(1.0, abs=1e-12)
    assert wins.champion_paired_accuracy == pytest.approx(0.5, abs=1e-12)

    _, good = registered_run(experiment, GOOD, tmp_path / "good")
    client.set_registered_model_alias(NAME, "champion", good)
    loses = check_reward.fn(NOISY, NAME, "champion", check, REFERENCE, settings)
    assert not loses.promote and loses.champion_version == "2"
    assert "0.5000 is worse than the champion's 1.0000 (v2) on check.csv@" in loses.reason
    # reads only: no version added, the aliases where they were
    versions = sorted(v.version for v in client.search_model_versions(f"name = '{NAME}'"))
    assert [str(v) for v in versions] == ["1", "2"]
    assert (alias_holder(NAME, "champion"), alias_holder(NAME, "challenger")) == ("2", "2")


def test_a_retried_registration_reuses_the_runs_version(store, tmp_path):
    _, experiment = store
    run_id, first = registered_run(experiment, GOOD, tmp_path)
    again = register_reward.fn(run_id, GOOD, GOOD.save(tmp_path / "r2.json"), NAME)
    assert again == first == "1"
    assert len(MlflowClient().search_model_versions(f"name = '{NAME}'")) == 1
    _, second = registered_run(experiment, NOISY, tmp_path / "other")
    assert second == "2" and alias_holder(NAME, "challenger") == "2"
