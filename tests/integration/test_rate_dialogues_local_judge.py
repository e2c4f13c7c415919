"""Flow ``rate_dialogues`` with the local judge on the published HAL16Q statements: the share
of dialogues the judge calls out of its domain (its ``out_of_domain`` column) is logged to
MLflow as ``ood_fraction``, over the dialogues it could rate, and a cached rerun logs the same.

The judge is a quick style-only one, trained on Llama-3.2-1B's epoch-0 doctor's visits; it rates
ten of that model's later dialogues, ten other LLMs' candidates and one dialogue without a
patient line (no rating, no flag). The expected share is the judge's own, recomputed here.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from hal_core.dialogue import SpeakerTags
from hal_core.domain import out_of_domain_fraction
from hal_core.features import DialogueFeaturizer, FeatureConfig
from hal_core.judges import LocalJudgeConfig
from hal_core.local_judge import LocalJudge, TrainingSet, TraitRegressorConfig, labelled_rows
from hal_core.paper import load_hal16q_published
from hal_core.settings import HalSettings
from hal_core.tables import ratings_by_position, read_table

pytestmark = pytest.mark.integration

STYLE_ONLY = FeatureConfig(embeddings=False, token_means=False, style=True)
TAGS = SpeakerTags.doctor_visit()
QUESTIONNAIRE = "questionnaires/hal16q_published.json"
FOLDER = "aligned_outputs/Llama-3.2-1B-Instruct"


@pytest.fixture(scope="module")
def rated(hal_home: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from flows.rate_dialogues import RateDialoguesParams, rate_dialogues

    root = tmp_path_factory.mktemp("local-rating")
    questionnaire = load_hal16q_published(data_dir / QUESTIONNAIRE)
    table = read_table(data_dir / FOLDER / "samples_epoch_00_scored_gpt-5.csv")
    ratings = ratings_by_position(table, "likert_evaluation", questionnaire)
    frame = pd.concat([table[["prompt", "dialogue"]], ratings], axis=1)
    training = TrainingSet("hal16q", questionnaire, TAGS, frame, "prompt")
    matrix = DialogueFeaturizer(STYLE_ONLY).transform(training.dialogues, TAGS)
    rows = labelled_rows(training, matrix, TraitRegressorConfig())
    judge = LocalJudge.fit(rows, questionnaire, TAGS, STYLE_ONLY)
    judge_folder = judge.save(root / "judge")

    own = read_table(data_dir / FOLDER / "samples_epoch_05_scored_gpt-5.csv")["dialogue"]
    others = pd.read_csv(data_dir / "synthlabs" / "candidates_test.csv")["dialogue"]
    dialogues = [*own.head(10), *others.head(10), "D: Hello?\nD: Anyone there?"]
    input_path = root / "dialogues.csv"
    pd.DataFrame({"dialogue": dialogues}).to_csv(input_path, index=False)
    params = RateDialoguesParams(
        input_file=str(input_path),
        questionnaire_file=QUESTIONNAIRE,
        speakers="doctor_visit",
        judge=LocalJudgeConfig(model_path=str(judge_folder)),
        output_file=str(root / "ratings.csv"),
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HAL_HOME", str(hal_home))
        patch.setenv("HAL_DATA_DIR", str(data_dir))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("HAL_TRACKING_URI", raising=False)
        first = rate_dialogues(params)
        again = rate_dialogues(params.model_copy(update={"output_file": str(root / "again.csv")}))
    expected = judge.predict_frame(dialogues, TAGS)
    return {"first": first, "again": again, "expected": expected}


def test_the_local_judges_out_of_domain_share_is_logged(rated, settings: HalSettings) -> None:
    expected = rated["expected"]
    assert pd.isna(expected["out_of_domain"].iloc[-1])  # not rated: no flag, not counted
    share = out_of_domain_fraction(expected["out_of_domain"])
    assert 0.1 < share < 0.9  # some flagged, some not (measured: 8 of 20), so the share says so
    client = MlflowClient(settings.resolved_tracking_uri())
    for result in (rated["first"], rated["again"]):
        metrics = client.get_run(result.run_id).data.metrics
        assert metrics["ood_fraction"] == pytest.approx(share, abs=1e-12)
        assert result.metrics["ood_fraction"] == pytest.approx(share, abs=1e-12)
        assert metrics["rated"] == 20 and metrics["failures"] == 1
        tags = client.get_run(result.run_id).data.tags
        assert tags["hal.judge"].startswith("local:") and tags["hal.stage"] == "rate_dialogues"
        assert len(tags["hal.data.dialogues"]) == 12 and tags["hal.questionnaire"]
    assert rated["again"].metrics["cache_hits"] == 21  # the flags come back from the cache
    table = pd.read_csv(rated["first"].output_file)
    assert table["status"].tolist() == ["rated"] * 20 + ["failed"]
    # the ratings file carries the flags too, so align can drop pairs of two far dialogues
    assert out_of_domain_fraction(table["out_of_domain"]) == pytest.approx(share, abs=1e-12)
    assert table["domain_distance"].iloc[:20].notna().all()
