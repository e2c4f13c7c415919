"""The local judge: data assembly, the accuracy targets of issue 5 on the real data (HAL16Q HL
agreement, HAL32Q reward on predicted traits; fixed seed 0), determinism, persistence and the
Judge contract. Embeddings are cached in the session's HAL_HOME, where the flow test finds them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hal_core.dialogue import SpeakerTags
from hal_core.embedding import EmbeddingCache
from hal_core.features import DialogueFeaturizer, FeatureConfig
from hal_core.judges import build_judge
from hal_core.judging import Judge, JudgeConfigurationError
from hal_core.local_judge import (
    LocalJudge,
    TrainingSet,
    TraitRegressorConfig,
    aligned_rating_rows,
    average_ratings_by_dialogue,
    evaluate_hl_judge,
    evaluate_reward_judge,
    fit_judge,
    grouped_folds,
    hal16q_paper_reward,
    hal16q_published,
    hl_agreement,
    near_constant_traits,
    retest_ceiling,
    turing_witness_rows,
)
from hal_core.questionnaire import Questionnaire
from hal_core.reward import PAPER_HAL16_TRAIT_IDS, TraitLogisticRegression
from hal_core.tables import read_table

ALIGNED = "aligned_outputs/*/samples_epoch_*_scored_gpt-5.csv"


def embedding_cache(hal_home: Path) -> EmbeddingCache:
    """The session's embedding cache; the same file the flow uses under HAL_HOME."""
    return EmbeddingCache(hal_home / "cache" / "embeddings.sqlite")


@pytest.fixture(scope="module")
def hal16q(data_dir: Path) -> Questionnaire:
    return hal16q_published(data_dir / "questionnaires" / "hal16q_published.json")


@pytest.fixture(scope="module")
def aligned(data_dir: Path, hal16q: Questionnaire) -> TrainingSet:
    tables = {str(p.relative_to(data_dir)): read_table(p) for p in sorted(data_dir.glob(ALIGNED))}
    rows = aligned_rating_rows(tables, hal16q)
    frame = average_ratings_by_dialogue(rows, hal16q.trait_ids)
    reward = hal16q_paper_reward(data_dir / "hal16_weights_paper.json", hal16q)
    return TrainingSet("hal16q", hal16q, SpeakerTags.doctor_visit(), frame, "prompt", rows, reward)


@pytest.fixture(scope="module")
def turing(data_dir: Path, hal_home: Path):
    questionnaire = Questionnaire.load(data_dir / "questionnaires" / "hal32q.json")
    frame = turing_witness_rows(
        read_table(data_dir / "turing" / "ratings32_gpt-5.csv"), questionnaire
    )
    training = TrainingSet("hal32q", questionnaire, SpeakerTags.turing(), frame, "game_id")
    featurizer = DialogueFeaturizer(FeatureConfig(), cache=embedding_cache(hal_home))
    return training, featurizer.transform(training.dialogues, training.tags)


@pytest.fixture(scope="module")
def judge(turing) -> LocalJudge:
    training, matrix = turing
    fitted = TraitLogisticRegression().fit(training.labels, training.frame["is_human"])
    reward = fitted.to_reward()
    return fit_judge(training, matrix, FeatureConfig(), TraitRegressorConfig(), reward)


def test_hal16q_ids_follow_published_positions_and_reproduce_recorded_hl(
    data_dir: Path, hal16q: Questionnaire
) -> None:
    assert hal16q.trait_ids == [f"t{k:02d}" for k in range(1, 17)]
    assert hal16q.trait("t01").text.startswith("Keeps replies brief")
    assert hal16q.trait("t04").text == "Uses lowercase texting style."
    assert [t.weight_fitted_for for t in hal16q.traits] == list(PAPER_HAL16_TRAIT_IDS)
    reward = hal16q_paper_reward(data_dir / "hal16_weights_paper.json", hal16q)
    path = sorted(data_dir.glob(ALIGNED))[0]
    rows = aligned_rating_rows({str(path.relative_to(data_dir)): read_table(path)}, hal16q)
    np.testing.assert_allclose(reward.score(rows), rows["hal16_score"], atol=1e-9)
    shuffled = rows[hal16q.trait_ids[::-1]]
    np.testing.assert_allclose(reward.score(shuffled), rows["hal16_score"], atol=1e-9)


def test_five_rerated_folders_become_one_row_per_dialogue_and_folds_split_by_prompt(
    aligned: TrainingSet,
) -> None:
    rows, frame = aligned.rating_rows, aligned.frame
    assert len(rows) == 3900 and rows["rater"].nunique() == 6
    assert len(frame) == 1500
    assert frame["n_ratings"].value_counts().to_dict() == {1: 900, 5: 600}
    first = frame[frame["n_ratings"] == 5].iloc[0]
    recorded = rows.loc[rows["dialogue"] == first["dialogue"], "hal16_score"]
    assert first["hal16_score"] == pytest.approx(recorded.mean())
    for train, test in grouped_folds(frame["prompt"].to_numpy(), 5, seed=0):
        assert not set(frame["prompt"].iloc[train]) & set(frame["prompt"].iloc[test])
        assert not set(frame["dialogue"].iloc[train]) & set(frame["dialogue"].iloc[test])
    ceiling = retest_ceiling(rows)
    assert ceiling["n_dialogues"] == 600 and ceiling["n_raters"] == 5
    assert 0.85 < ceiling["pearson"] < 0.95 and 0.85 < ceiling["pair_accuracy"] < 0.95
    flagged = near_constant_traits(rows[aligned.questionnaire.trait_ids])
    assert {"t02", "t04"} <= set(flagged) and flagged["t04"] == 1.0  # emoji, lowercase
    assert "t01" not in flagged


@pytest.mark.slow
def test_hal16q_hl_from_predicted_traits_beats_thresholds(aligned: TrainingSet, hal_home: Path):
    featurizer = DialogueFeaturizer(FeatureConfig(), cache=embedding_cache(hal_home))
    matrix = featurizer.transform(aligned.dialogues, aligned.tags)
    assert matrix.ok.all()
    report = evaluate_hl_judge(aligned, matrix, TraitRegressorConfig(), 5, seed=0, style_only=False)
    metrics = report.metrics
    assert metrics["cv.hl.pearson"] >= 0.85
    assert metrics["cv.hl.pair_accuracy"] >= 0.87
    assert metrics["cv.hl.n_pairs"] > 7000
    # GPT-5 against its own re-rating of the same dialogue
    assert metrics["ceiling.hl.pearson"] == pytest.approx(0.904, abs=0.005)
    assert metrics["ceiling.hl.pair_accuracy"] == pytest.approx(0.889, abs=0.005)
    table = report.per_trait.set_index("trait_id")
    assert table.loc["t04", "near_constant"] and np.isnan(table.loc["t04", "spearman"])
    assert table.loc["t01", "spearman"] > 0.7  # brevity: the heaviest weight of the reward


def test_hl_agreement_counts_same_prompt_pairs_only() -> None:
    recorded = np.array([0.0, 2.0, 5.0, 0.0, 3.0])
    prompts = np.array(["a", "a", "a", "b", "b"])
    predicted = np.array([0.0, 1.0, 0.5, 1.0, 0.0])
    agreement = hl_agreement(predicted, recorded, prompts, min_difference=1.0)
    # pairs (0,1) ok, (0,2) ok, (1,2) wrong, (3,4) wrong
    assert agreement.n_pairs == 4 and agreement.pair_accuracy == 0.5


@pytest.mark.slow
def test_hal32q_reward_on_predicted_traits_beats_thresholds(turing) -> None:
    training, matrix = turing
    assert matrix.ok.all()
    report = evaluate_reward_judge(
        training, matrix, TraitRegressorConfig(), 10, seed=0, style_only=False, reference=False
    )
    metrics = report.metrics
    assert metrics["cv.reward.pointwise"] >= 0.84
    assert metrics["cv.reward.paired"] >= 0.93
    assert set(report.reward.weights) <= set(training.questionnaire.trait_ids)
    assert report.per_trait["trait_id"].tolist() == training.questionnaire.trait_ids
    assert report.per_trait.loc[~report.per_trait["near_constant"], "spearman"].min() > 0.1


def test_retraining_gives_identical_predictions_and_save_load_round_trips(
    turing, judge: LocalJudge, tmp_path: Path, hal_home: Path
) -> None:
    training, _ = turing
    again = DialogueFeaturizer(FeatureConfig(), cache=embedding_cache(hal_home)).transform(
        training.dialogues, training.tags
    )
    retrained = fit_judge(training, again, FeatureConfig(), TraitRegressorConfig(), judge.reward)
    assert retrained.fingerprint() == judge.fingerprint()
    sample = training.dialogues[:25]
    expected = judge.predict_frame(sample)
    pd.testing.assert_frame_equal(retrained.predict_frame(sample), expected)

    folder = judge.save(tmp_path / "judge")
    meta = json.loads((folder / "local_judge.json").read_text())
    assert meta["questionnaire_id"] == "hal32q"
    assert meta["questionnaire_version"] == training.questionnaire.version
    loaded = LocalJudge.from_path(folder)
    assert loaded.fingerprint() == judge.fingerprint()
    pd.testing.assert_frame_equal(loaded.predict_frame(sample), expected)
    assert loaded.with_reward(None).fingerprint() != judge.fingerprint()


def test_predictions_are_clipped_per_trait_with_hl_and_reasons(judge: LocalJudge) -> None:
    texts = [
        "I: hey who are you\nW: im sam lol, just chilling\nI: cool\nW: yeah haha",
        "I: Hello.\nW: Greetings. I am delighted to assist you with any inquiry you may have.",
        "I: hello?\nI: anyone there?",
        "W: " + "Dios mío, " * 200,
    ]
    frame = judge.predict_frame(texts)
    ids = judge.questionnaire.trait_ids
    assert list(frame.columns) == [*ids, "hl", "error"]
    rated = frame.iloc[[0, 1, 3]]
    assert rated[ids].notna().all().all() and rated["error"].isna().all()
    assert rated[ids].to_numpy().min() >= 1 and rated[ids].to_numpy().max() <= 5
    assert frame.loc[0, "hl"] > frame.loc[1, "hl"]  # casual texting reads more human
    assert frame.loc[0, "t03"] > frame.loc[1, "t03"]  # t03: lowercase texting style
    assert frame.loc[2, ids].isna().all() and "rated speaker" in frame.loc[2, "error"]


def test_local_judge_fulfils_the_judge_contract(judge: LocalJudge, tmp_path: Path) -> None:
    assert isinstance(judge, Judge)
    tags = SpeakerTags.turing()
    texts = ["I: hi\nW: hey there lol", "I: who is this?\nI: hello?"]
    reordered = judge.questionnaire.subset(judge.questionnaire.trait_ids[::-1], "HAL32Q")
    results = judge.rate(texts, reordered, tags, item_ids=["a", "b"])
    assert [r.item_id for r in results] == ["a", "b"]
    assert results[0].ok and list(results[0].ratings) == reordered.trait_ids
    assert results[0].ratings == judge.rate(texts[:1], judge.questionnaire, tags)[0].ratings
    assert results[1].error_kind == "input" and "rated speaker" in results[1].error

    other = Questionnaire.model_validate(
        {"name": "x", "traits": [{"id": "t01", "text": "Something else entirely."}]}
    )
    with pytest.raises(JudgeConfigurationError, match="differently worded"):
        judge.rate(texts, other, tags)

    folder = judge.save(tmp_path / "registry-judge")
    built = build_judge({"backend": "local", "model_path": str(folder)})
    assert built.fingerprint() == judge.fingerprint()
