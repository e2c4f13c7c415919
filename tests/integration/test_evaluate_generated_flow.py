"""The evaluate flow on generated dialogues with local judges, read back from MLflow and Prefect.

Two fast local judges (style features only) are trained here on the published HAL16Q ratings
of two different aligned_outputs folders (Llama-3.2-1B's own outputs; the Llama-3.3-70B
dialogues), so the second judge saw other dialogues rated by another GPT-5 pass. The policy's
tables are crafted: epoch 0 answers formally, epoch 1 casually (tests/fakes/generated.py).
A first run promotes the policy; a second run with a tight length guard refuses it, registers
another version and leaves ``@champion`` where it was, with every rating served by the cache.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from hal_core.dialogue import SpeakerTags
from hal_core.features import DialogueFeaturizer, FeatureConfig
from hal_core.judges import LocalJudgeConfig
from hal_core.local_judge import LocalJudge, TrainingSet, TraitRegressorConfig, labelled_rows
from hal_core.paper import load_hal16q_published, load_paper_weights
from hal_core.reward import HLReward
from hal_core.settings import HalSettings
from hal_core.tables import ratings_by_position, read_table
from tests.fakes.generated import write_policy_tables

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STYLE_ONLY = FeatureConfig(embeddings=False, token_means=False, style=True)
TAGS = SpeakerTags.doctor_visit()
FOLDERS = {"first": "Llama-3.2-1B-Instruct", "second": "Llama-3.3-70B-Instruct"}


def strict_json(text: str) -> dict:
    """JSON that must not hold NaN or Infinity."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def train_judge(data_dir: Path, folder: str, target: Path) -> Path:
    """A style-only local judge on one aligned_outputs folder's HAL16Q ratings."""
    questionnaire = load_hal16q_published(data_dir / "questionnaires/hal16q_published.json")
    parts = []
    for path in sorted((data_dir / "aligned_outputs" / folder).glob("samples_epoch_*.csv")):
        table = read_table(path)
        ratings = ratings_by_position(table, "likert_evaluation", questionnaire)
        parts.append(pd.concat([table[["prompt", "dialogue"]], ratings], axis=1))
    frame = pd.concat(parts, ignore_index=True)
    training = TrainingSet("hal16q", questionnaire, TAGS, frame, "prompt")
    matrix = DialogueFeaturizer(STYLE_ONLY).transform(training.dialogues, TAGS)
    rows = labelled_rows(training, matrix, TraitRegressorConfig())
    judge = LocalJudge.fit(rows, questionnaire, TAGS, STYLE_ONLY)
    return judge.save(target)


@pytest.fixture(scope="module")
def workspace(hal_home: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("generated-evaluation")
    judges = {
        name: train_judge(data_dir, f, folder / f"judge-{name}") for name, f in FOLDERS.items()
    }
    tables = write_policy_tables(folder / "tables")
    checkpoints = folder / "checkpoints"
    for name in ("base", "epoch-1"):
        (checkpoints / name).mkdir(parents=True)
        config = {"base_model_name_or_path": "tiny-base", "peft_type": "LORA", "r": 8}
        (checkpoints / name / "adapter_config.json").write_text(json.dumps(config))
        (checkpoints / name / "adapter_model.safetensors").write_bytes(bytes(range(64)))
    return {"judges": judges, "tables": tables, "checkpoints": checkpoints}


def policy_params(workspace: dict, **overrides):
    from flows.evaluate import EvaluateParams, PolicyRegistration

    return EvaluateParams(
        generated_files=[str(path) for path in workspace["tables"]],
        judge=LocalJudgeConfig(model_path=str(workspace["judges"]["first"])),
        second_judge=LocalJudgeConfig(model_path=str(workspace["judges"]["second"])),
        questionnaire="questionnaires/hal16q_published.json",
        reward="hal16_weights_paper.json",
        policy=PolicyRegistration(checkpoints_dir=str(workspace["checkpoints"])),
        **overrides,
    )


@pytest.fixture(scope="module")
def promoted(workspace: dict, hal_home: Path, data_dir: Path):
    from flows.evaluate import evaluate

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HAL_HOME", str(hal_home))
        patch.setenv("HAL_DATA_DIR", str(data_dir))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("HAL_TRACKING_URI", raising=False)
        yield evaluate(policy_params(workspace))


def history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def test_generated_dialogues_are_scored_tested_guarded_and_the_policy_promoted(
    promoted, workspace: dict, settings: HalSettings, data_dir: Path, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    result = promoted
    assert result.mode == "generated" and result.best_epoch == {"tiny-base": 1}
    assert result.rating_failures == 0 and result.degenerate == 1
    assert result.guards_passed is True and result.failed_guards == []
    assert result.promotion.promote is True, result.promotion.reasons
    assert result.hl_gain["tiny-base"] > 1.0 and result.p_value["tiny-base"] < 1e-6
    assert result.second_judge_gain["tiny-base"] > 1.0  # the second judge agrees
    assert result.hl_by_id_gain["tiny-base"] is not None

    # The HL curve, recomputed here: judge -> paper-compatible reward -> mean per persona.
    judge = LocalJudge.load(workspace["judges"]["first"])
    paper = load_paper_weights(data_dir / "hal16_weights_paper.json")
    reward = HLReward(paper.weights("paper_compatible"), paper.b)
    tables = pd.concat([pd.read_csv(path) for path in workspace["tables"]], ignore_index=True)
    fine = tables[tables["degenerate"].isna()].reset_index(drop=True)
    predicted = judge.predict_frame(fine["dialogue"].tolist(), TAGS)
    fine["hl"] = reward.score(predicted[judge.questionnaire.trait_ids])
    expected = fine.groupby(["epoch", "persona_id"])["hl"].mean().groupby("epoch").mean()

    client = MlflowClient(settings.resolved_tracking_uri())
    run = client.get_run(result.run_id)
    metrics = run.data.metrics
    curve = history(client, result.run_id, "hl.mean")
    assert sorted(curve) == [0, 1]
    np.testing.assert_allclose([curve[0], curve[1]], expected.loc[[0, 1]], atol=1e-9)
    assert metrics["hl.mean.e0"] == pytest.approx(curve[0])
    assert metrics["hl.mean.e1"] == pytest.approx(curve[1])
    assert history(client, result.run_id, "ttest.p")[1] == pytest.approx(
        result.p_value["tiny-base"]
    )
    assert metrics["hl.gain"] == pytest.approx(result.hl_gain["tiny-base"])
    assert metrics["second_judge.hl.gain"] == pytest.approx(result.second_judge_gain["tiny-base"])
    assert {"hl.paper_compatible.gain", "hl.by_id.gain", "hl.ci_low", "hl.ci_high"} <= set(metrics)
    assert metrics["guards.passed"] == 1.0 and metrics["promotion.promote"] == 1.0
    assert history(client, result.run_id, "text.format_failures")[1] == pytest.approx(1 / 13)
    drift = history(client, result.run_id, "guard.words_per_turn_drift")[1]
    assert 0.2 < drift < 0.5  # casual replies are shorter, within the default limit
    assert metrics["judge.rated"] == 24 and metrics["second_judge.rated"] == 24
    # each local judge reports out_of_domain: its share per epoch, over the dialogues it rated
    known = predicted["out_of_domain"].notna()
    flagged = predicted.loc[known, "out_of_domain"].astype(bool).astype(float)
    expected_ood = flagged.groupby(fine.loc[known, "epoch"]).mean()
    ood = history(client, result.run_id, "judge.ood_fraction")
    assert sorted(ood) == [0, 1]
    np.testing.assert_allclose([ood[0], ood[1]], expected_ood.loc[[0, 1]], atol=1e-9)
    second_ood = history(client, result.run_id, "second_judge.ood_fraction")
    assert sorted(second_ood) == [0, 1] and all(0 <= v <= 1 for v in second_ood.values())
    guard_values = {k: round(v, 4) for k, v in metrics.items() if k.startswith("guard.")}
    print(
        f"HL {curve[0]:.3f} -> {curve[1]:.3f}, gain {result.hl_gain['tiny-base']:+.3f} "
        f"(p = {result.p_value['tiny-base']:.2g}), by-id gain "
        f"{result.hl_by_id_gain['tiny-base']:+.3f}, second judge gain "
        f"{result.second_judge_gain['tiny-base']:+.3f}; {guard_values}"
    )
    assert run.data.params["judge.backend"] == "local"
    assert run.data.params["second_judge.fingerprint"].startswith("local-")

    generated = {a.path for a in client.list_artifacts(result.run_id, "generated")}
    assert generated == {"generated/generated-base.csv", "generated/generated-epoch-1.csv"}
    folder = Path(client.download_artifacts(result.run_id, "", str(tmp_path)))
    report = strict_json((folder / "evaluation/report.json").read_text())
    assert report["promotion"]["promote"] is True
    assert report["registered_version"] == result.registered_version
    guards = strict_json((folder / "evaluation/guards.json").read_text())
    assert guards["passed"] is True and len(guards["candidate"]["checks"]) == 5
    examples = strict_json((folder / "examples/before_after.json").read_text())["examples"]
    assert examples and {e["before"]["epoch"] for e in examples} == {0}
    markdown = (folder / "examples/before_after.md").read_text()
    first = examples[0]
    assert first["before"]["dialogue"] in markdown and first["after"]["dialogue"] in markdown
    assert first["before"]["dialogue_id"].startswith(first["persona_id"] + "-base-")
    assert (folder / "policy/epoch-1/adapter_config.json").is_file()

    # hal-policy@champion is this run's epoch-1 adapter, with its evidence as tags.
    champion = client.get_model_version_by_alias("hal-policy", "champion")
    assert str(champion.version) == result.registered_version and champion.run_id == result.run_id
    assert champion.tags["decision"] == "promote" and champion.tags["epoch"] == "1"
    assert champion.tags["base_model"] == "tiny-base" and champion.tags["checkpoint"] == "epoch-1"
    assert float(champion.tags["hl_gain"]) == pytest.approx(result.hl_gain["tiny-base"], rel=1e-5)
    assert champion.description and client.get_registered_model("hal-policy").description
    # figures are rounded for people (no float repr's 17 digits)
    assert not re.search(r"\d\.\d{6,}", champion.description), champion.description
    import mlflow

    mlflow.set_tracking_uri(settings.resolved_tracking_uri())
    adapter = Path(mlflow.artifacts.download_artifacts("models:/hal-policy@champion"))
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"

    key_filter = ArtifactFilter(key=ArtifactFilterKey(any_=["evaluation-summary"]))
    with get_client(sync_client=True) as prefect_client:
        summaries = [a.data for a in prefect_client.read_artifacts(artifact_filter=key_filter)]
    mine = [text for text in summaries if result.run_id in str(text)]
    assert mine and "Decision: **promote**" in mine[0] and "words_per_turn_drift" in mine[0]


def test_a_failing_guard_refuses_promotion_but_still_registers_from_the_cache(
    promoted, workspace: dict, settings: HalSettings
) -> None:
    from flows.evaluate import evaluate
    from hal_core.evaluation import GuardThresholds

    tight = GuardThresholds(max_words_per_turn_drift=0.05)
    result = evaluate(policy_params(workspace, guards=tight))
    assert result.promotion.promote is False
    assert result.failed_guards == ["words_per_turn_drift"]
    assert any(
        r.startswith("guards: 1 failed: words_per_turn_drift") for r in result.promotion.reasons
    )
    assert result.hl_gain == pytest.approx(promoted.hl_gain)  # same dialogues, same judge

    client = MlflowClient(settings.resolved_tracking_uri())
    metrics = client.get_run(result.run_id).data.metrics
    assert metrics["promotion.promote"] == 0.0 and metrics["guard.words_per_turn_drift.passed"] == 0
    assert metrics["judge.requested"] == 0 and metrics["judge.cache_hits"] == 24  # nothing re-asked
    assert metrics["second_judge.requested"] == 0
    for key in ("judge.ood_fraction", "second_judge.ood_fraction"):  # the cache keeps the flags
        assert history(client, result.run_id, key) == history(client, promoted.run_id, key)
    refused = client.get_model_version("hal-policy", result.registered_version)
    assert (
        refused.tags["decision"] == "refuse"
        and "words_per_turn_drift" in refused.tags["decision.reasons"]
    )
    assert int(result.registered_version) == int(promoted.registered_version) + 1
    champion = client.get_model_version_by_alias("hal-policy", "champion")
    assert str(champion.version) == promoted.registered_version  # the alias did not move


def test_a_registered_reward_model_is_read_back_as_the_reward_it_wraps(
    settings: HalSettings, data_dir: Path, tmp_path: Path
) -> None:
    import mlflow

    from hal_core.questionnaire import Questionnaire
    from tasks.evaluation import load_evaluation_reward
    from tasks.registry import log_reward_model
    from tasks.tracking import configure_tracking, ensure_experiment

    configure_tracking(settings)
    reward = HLReward({"t05": -0.5, "t01": 1.25}, bias=0.25)
    path = reward.save(tmp_path / "reward.json")
    with mlflow.start_run(experiment_id=ensure_experiment("hal-evaluate-reward-uri", settings)):
        log_reward_model(reward, str(path), "hal-reward-evaluate-test", "champion")
    questionnaire = Questionnaire.load(data_dir / "questionnaires/hal16q_published.json")
    loaded = load_evaluation_reward.fn(
        "models:/hal-reward-evaluate-test@champion", settings, questionnaire
    )
    assert dict(loaded.reward.weights) == dict(reward.weights) and loaded.by_id is None
    assert loaded.reward.version == reward.version


def test_a_reward_needing_traits_the_questionnaire_does_not_ask_fails_before_rating(
    settings: HalSettings, tmp_path: Path
) -> None:
    from flows.evaluate import load_scoring

    path = HLReward({"t01": 1.0, "t32": 2.0}, bias=0.0).save(tmp_path / "hal32q-reward.json")
    with pytest.raises(ValueError, match=r"hal32q-reward\.json: the reward needs traits \['t32'\]"):
        load_scoring("questionnaires/hal16q_published.json", str(path), settings)


def test_empty_dialogues_stop_the_cli_saying_nothing_could_be_rated_and_why(
    settings: HalSettings, data_dir: Path, tmp_path: Path
) -> None:
    """Issue 24, row 4: every dialogue empty used to log ``rated 0, failed 4`` and end in a bare
    ``KeyError: 'model'``. A recorded judge (it has no rating for an empty text) keeps it fast."""
    import yaml
    from click.testing import CliRunner

    from hal_cli.commands import app
    from tests.fakes.generated import generated_table

    tables = []
    for epoch in (0, 1):
        path = tmp_path / f"empty-e{epoch}.csv"
        generated_table(epoch, [("p0", ""), ("p1", "")]).to_csv(path, index=False)
        tables.append(str(path))
    source = data_dir / "aligned_outputs" / FOLDERS["first"] / "samples_epoch_00_scored_gpt-5.csv"
    recorded = tmp_path / "recorded.csv"
    pd.read_csv(source).head(3)[["dialogue", "likert_evaluation"]].to_csv(recorded, index=False)
    recipe = tmp_path / "evaluate-empty.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "generated_files": tables,
                "judge": {"backend": "recorded", "paths": [str(recorded)]},
                "cache_file": str(tmp_path / "ratings.sqlite"),
                "policy": {"register_as": None},
            }
        )
    )
    invoked = CliRunner().invoke(app, ["evaluate", "--recipe", str(recipe)])
    assert invoked.exit_code != 0
    message = invoked.output
    assert "KeyError" not in message
    assert f"{tables[0]}, {tables[1]}: nothing could be rated by the judge, 0 of 4" in message
    assert "4 failed (missing): no recorded rating for this dialogue" in message
    assert f"{tables[0]} rows [1, 2]; {tables[1]} rows [1, 2]" in message
