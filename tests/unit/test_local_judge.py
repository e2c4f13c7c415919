"""The local judge: data assembly, the accuracy figures on the real data (fixed seeds; the
honest leave-one-generator-out figures and today's grouped CV), the out-of-domain signal,
determinism, persistence and the Judge contract. Embeddings are cached in the session's
HAL_HOME, where the flow test finds them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hal_core.dialogue import SpeakerTags
from hal_core.domain import out_of_domain_fraction
from hal_core.embedding import EmbeddingCache
from hal_core.features import DialogueFeaturizer, FeatureConfig, FeatureMatrix
from hal_core.folds import grouped_folds
from hal_core.judges import build_judge
from hal_core.judging import Judge, JudgeConfigurationError
from hal_core.local_judge import (
    TURING,
    LocalJudge,
    TrainingSet,
    TraitRegressorConfig,
    aligned_generator,
    aligned_rating_rows,
    average_ratings_by_dialogue,
    evaluate_reward_judge,
    fit_judge,
    hal16q_reward,
    hl_agreement,
    near_constant_traits,
    retest_ceiling,
    stack_training,
    turing_witness_rows,
)
from hal_core.paper import HAL16Q_PUBLISHED_TRAIT_IDS, load_hal16q_published
from hal_core.questionnaire import Questionnaire
from hal_core.reward import TraitLogisticRegression
from hal_core.tables import ratings_by_position, read_table
from hal_core.transfer import HeldOutSet, evaluate_generator_transfer

ALIGNED = "aligned_outputs/*/samples_epoch_*_scored_gpt-5.csv"
SCORED16 = "synthlabs/candidates_train_scored16_gpt-5-mini.csv"


def embedding_cache(hal_home: Path) -> EmbeddingCache:
    """The session's embedding cache; the same file the flow uses under HAL_HOME."""
    return EmbeddingCache(hal_home / "cache" / "embeddings.sqlite")


def featurize(training: TrainingSet, hal_home: Path) -> FeatureMatrix:
    featurizer = DialogueFeaturizer(FeatureConfig(), cache=embedding_cache(hal_home))
    return featurizer.transform(training.dialogues, training.tags)


@pytest.fixture(scope="module")
def hal16q(data_dir: Path) -> Questionnaire:
    return load_hal16q_published(data_dir / "questionnaires" / "hal16q_published.json")


@pytest.fixture(scope="module")
def aligned(data_dir: Path, hal16q: Questionnaire) -> TrainingSet:
    tables = {str(p.relative_to(data_dir)): read_table(p) for p in sorted(data_dir.glob(ALIGNED))}
    rows = aligned_rating_rows(tables, hal16q)
    frame = average_ratings_by_dialogue(rows, hal16q.trait_ids)
    reward = hal16q_reward(data_dir / "hal16_weights_paper.json")
    return TrainingSet("hal16q", hal16q, SpeakerTags.doctor_visit(), frame, "prompt", rows, reward)


@pytest.fixture(scope="module")
def turing_set(data_dir: Path) -> TrainingSet:
    questionnaire = Questionnaire.load(data_dir / "questionnaires" / "hal32q.json")
    frame = turing_witness_rows(
        read_table(data_dir / "turing" / "ratings32_gpt-5.csv"), questionnaire
    )
    return TrainingSet(
        "hal32q", questionnaire, SpeakerTags.turing(), frame, "game_id", domain=TURING
    )


@pytest.fixture(scope="module")
def small_turing(turing_set: TrainingSet, hal_home: Path):
    """The witnesses of the first 300 games: enough for the contract tests, quick to encode."""
    games = turing_set.frame["game_id"].drop_duplicates().head(300)
    frame = turing_set.frame[turing_set.frame["game_id"].isin(games)].reset_index(drop=True)
    training = TrainingSet(
        "hal32q", turing_set.questionnaire, turing_set.tags, frame, "game_id", domain=TURING
    )
    return training, featurize(training, hal_home)


@pytest.fixture(scope="module")
def judge(small_turing) -> LocalJudge:
    training, matrix = small_turing
    fitted = TraitLogisticRegression().fit(training.labels, training.frame["is_human"])
    return fit_judge(training, matrix, FeatureConfig(), TraitRegressorConfig(), fitted.to_reward())


def test_hal16q_statements_carry_hal32q_ids_and_the_reward_reproduces_hal16_score(
    data_dir: Path, hal16q: Questionnaire
) -> None:
    assert hal16q.trait_ids == list(HAL16Q_PUBLISHED_TRAIT_IDS)
    assert hal16q.trait("t01").text.startswith("Keeps replies brief")
    assert hal16q.trait("t03").text == "Uses lowercase texting style."  # published position 4
    reward = hal16q_reward(data_dir / "hal16_weights_paper.json")
    assert set(reward.trait_ids) == set(hal16q.trait_ids)
    path = sorted(data_dir.glob(ALIGNED))[0]
    rows = aligned_rating_rows({str(path.relative_to(data_dir)): read_table(path)}, hal16q)
    np.testing.assert_allclose(reward.score(rows), rows["hal16_score"], atol=1e-9)
    shuffled = rows[hal16q.trait_ids[::-1]]
    np.testing.assert_allclose(reward.score(shuffled), rows["hal16_score"], atol=1e-9)
    scored = read_table(data_dir / SCORED16)
    ratings = ratings_by_position(scored, "likert_evaluation", hal16q)
    np.testing.assert_allclose(reward.score(ratings), scored["hal16_score"], atol=1e-6)


def test_rerated_folders_become_one_row_per_dialogue_with_its_generator(
    aligned: TrainingSet,
) -> None:
    rows, frame = aligned.rating_rows, aligned.frame
    assert len(rows) == 3900 and rows["rater"].nunique() == 6
    assert len(frame) == 1500
    assert frame["n_ratings"].value_counts().to_dict() == {1: 900, 5: 600}
    assert frame["generator"].value_counts().to_dict() == {
        "Llama-3.2-1B-Instruct": 900,
        "Llama-3.3-70B-Instruct": 600,
    }
    assert (frame.loc[frame["n_ratings"] == 5, "generator"] == "Llama-3.3-70B-Instruct").all()
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
    assert {"t05", "t03"} <= set(flagged) and flagged["t03"] == 1.0  # emoji, lowercase
    assert "t01" not in flagged
    with pytest.raises(ValueError, match="cannot tell the generator"):
        aligned_generator(["Llama-3.2-1B-Instruct", "Llama-3.3-70B-Instruct"])
    assert aligned_generator(["Qwen2.5-72B-Instruct"]) == "Llama-3.3-70B-Instruct"


def test_hl_agreement_counts_same_prompt_pairs_only() -> None:
    recorded = np.array([0.0, 2.0, 5.0, 0.0, 3.0])
    prompts = np.array(["a", "a", "a", "b", "b"])
    predicted = np.array([0.0, 1.0, 0.5, 1.0, 0.0])
    agreement = hl_agreement(predicted, recorded, prompts, min_difference=1.0)
    # pairs (0,1) ok, (0,2) ok, (1,2) wrong, (3,4) wrong
    assert agreement.n_pairs == 4 and agreement.pair_accuracy == 0.5


def test_domains_stack_on_the_judges_trait_ids(aligned: TrainingSet, small_turing) -> None:
    turing, turing_matrix = small_turing
    doctor = aligned.frame.head(4).reset_index(drop=True)
    doctor_set = TrainingSet("hal16q", aligned.questionnaire, aligned.tags, doctor, "prompt")
    doctor_matrix = FeatureMatrix(
        np.zeros((4, len(turing_matrix.names))), turing_matrix.names, [None, None, "bad", None]
    )
    config = TraitRegressorConfig(domain_weights={TURING: 0.5})
    rows = stack_training(
        [(doctor_set, doctor_matrix), (turing, turing_matrix)],
        config,
        aligned.questionnaire.trait_ids,
    )
    assert list(rows.labels.columns) == aligned.questionnaire.trait_ids
    assert len(rows) == 3 + len(turing.frame) and rows.n_unparseable == 1
    assert rows.weights[:3].tolist() == [1.0, 1.0, 1.0] and set(rows.weights[3:]) == {0.5}
    assert rows.groups[0].startswith("doctor_visit:") and rows.groups[-1].startswith("turing:")
    with pytest.raises(ValueError, match="lack trait ids"):
        stack_training([(doctor_set, doctor_matrix)], config, turing.questionnaire.trait_ids)


@pytest.mark.slow
def test_doctor_visit_judge_transfers_to_generators_it_never_saw(
    aligned: TrainingSet, turing_set: TrainingSet, data_dir: Path, hal16q: Questionnaire,
    hal_home: Path,
) -> None:  # fmt: skip
    """The honest figures of the default judge (both domains): leave-one-generator-out HL r
    and pair accuracy meet the issue's targets (measured 0.856 / 0.904, held-out Llama-3.2-1B
    0.828 / 0.880, Llama-3.3-70B 0.885 / 0.928; no split is random and a ridge fit is
    deterministic, so the margins of 0.03-0.08 only have to absorb float and thread noise) and
    beat the length heuristic (0.695 / 0.856); the out-of-domain test (eight other LLMs, another
    rater) beats it too (0.634 against 0.358)."""
    scored = read_table(data_dir / SCORED16)
    frame = pd.concat(
        [
            scored[["persona_id", "model", "dialogue"]],
            ratings_by_position(scored, "likert_evaluation", hal16q),
        ],
        axis=1,
    )
    test = TrainingSet("hal16q", hal16q, SpeakerTags.doctor_visit(), frame, "persona_id")
    report = evaluate_generator_transfer(
        aligned,
        featurize(aligned, hal_home),
        TraitRegressorConfig(),
        aligned.reward,
        extra=[(turing_set, featurize(turing_set, hal_home))],
        tests=[HeldOutSet("scored16", test, featurize(test, hal_home), "persona_id")],
    )
    m = report.metrics
    shown = ["logo.hl.pearson", "logo.hl.pair_accuracy", "baseline.length.logo.hl.pearson"]
    shown += ["baseline.length.logo.hl.pair_accuracy", "test.scored16.hl.pearson"]
    shown += [k for k in sorted(m) if k.endswith("ood_fraction")]
    print(", ".join(f"{k} {m[k]:.3f}" for k in shown))
    assert m["logo.hl.pearson"] >= 0.80 and m["logo.hl.pair_accuracy"] >= 0.87
    for generator in ("Llama-3.2-1B-Instruct", "Llama-3.3-70B-Instruct"):
        assert m[f"logo.{generator}.hl.pearson"] >= 0.75
        assert m[f"logo.{generator}.hl.n_pairs"] > 900
    assert m["logo.hl.pearson"] > m["baseline.length.logo.hl.pearson"] + 0.1
    assert m["logo.hl.pair_accuracy"] > m["baseline.length.logo.hl.pair_accuracy"]
    assert m["test.scored16.hl.pearson"] > m["baseline.length.test.scored16.hl.pearson"] + 0.1
    assert m["test.scored16.hl.n_pairs"] > 50
    # Turing, each AI family held out: the judge's HL follows GPT-5's and ranks the human first
    assert m["turing_family.hl.pearson"] > 0.6 and m["turing_family.human_vs_ai"] > 0.65
    assert m["turing_family.interrogator"] > m["baseline.length.turing_family.interrogator"]
    assert set(report.predictions["split"]) >= {"logo.Llama-3.2-1B-Instruct", "test.scored16"}
    assert report.predictions["domain_distance"].notna().all()
    # out of domain (calibrated to flag 5% of fresh in-domain dialogues): Llama-3.3-70B held
    # out 4% and Turing families 5%, but Llama-3.2-1B's odder outputs 40% (a judge that saw
    # only the 70B) and eight other LLMs' longer dialogues 75% (measured)
    assert m["logo.Llama-3.3-70B-Instruct.ood_fraction"] < 0.15
    assert m["turing_family.ood_fraction"] < 0.15
    assert m["test.scored16.ood_fraction"] > 0.5


@pytest.mark.slow
def test_hal32q_reward_on_predicted_traits_beats_thresholds(
    turing_set: TrainingSet, hal_home: Path
) -> None:
    matrix = featurize(turing_set, hal_home)
    assert matrix.ok.all()
    report = evaluate_reward_judge(
        turing_set, matrix, TraitRegressorConfig(), 10, seed=0, style_only=False, reference=False
    )
    metrics = report.metrics
    assert metrics["cv.reward.pointwise"] >= 0.84
    assert metrics["cv.reward.paired"] >= 0.93
    assert set(report.reward.weights) <= set(turing_set.questionnaire.trait_ids)
    assert report.per_trait["trait_id"].tolist() == turing_set.questionnaire.trait_ids
    assert report.per_trait.loc[~report.per_trait["near_constant"], "spearman"].min() > 0.1


def test_retraining_gives_identical_predictions_and_save_load_round_trips(
    small_turing, judge: LocalJudge, tmp_path: Path, hal_home: Path
) -> None:
    training, _ = small_turing
    again = featurize(training, hal_home)
    retrained = fit_judge(training, again, FeatureConfig(), TraitRegressorConfig(), judge.reward)
    assert retrained.fingerprint() == judge.fingerprint()
    sample = training.dialogues[:25]
    expected = judge.predict_frame(sample)
    pd.testing.assert_frame_equal(retrained.predict_frame(sample), expected)

    folder = judge.save(tmp_path / "judge")
    meta = json.loads((folder / "local_judge.json").read_text())
    assert meta["questionnaire_id"] == "hal32q"
    assert meta["questionnaire_version"] == training.questionnaire.version
    assert meta["training"]["domains"] == {"turing": len(training.frame)}
    loaded = LocalJudge.from_path(folder)
    assert loaded.fingerprint() == judge.fingerprint()
    pd.testing.assert_frame_equal(loaded.predict_frame(sample), expected)
    assert loaded.with_reward(None).fingerprint() != judge.fingerprint()


def test_predictions_are_clipped_per_trait_with_hl_domain_and_reasons(judge: LocalJudge) -> None:
    texts = [
        "I: hey who are you\nW: im sam lol, just chilling\nI: cool\nW: yeah haha",
        "I: Hello.\nW: Greetings. I am delighted to assist you with any inquiry you may have.",
        "I: hello?\nI: anyone there?",
        "W: " + "Dios mío, " * 200,
    ]
    frame = judge.predict_frame(texts)
    ids = judge.questionnaire.trait_ids
    assert list(frame.columns) == [*ids, "hl", "domain_distance", "out_of_domain", "error"]
    rated = frame.iloc[[0, 1, 3]]
    assert rated[ids].notna().all().all() and rated["error"].isna().all()
    assert rated[ids].to_numpy().min() >= 1 and rated[ids].to_numpy().max() <= 5
    assert frame.loc[0, "hl"] > frame.loc[1, "hl"]  # casual texting reads more human
    assert frame.loc[0, "t03"] > frame.loc[1, "t03"]  # t03: lowercase texting style
    assert frame.loc[2, ids].isna().all() and "rated speaker" in frame.loc[2, "error"]
    assert np.isnan(frame.loc[2, "domain_distance"]) and pd.isna(frame.loc[2, "out_of_domain"])
    # a Spanish monologue is nothing like a Turing witness; a short chat is much closer
    assert frame.loc[3, "out_of_domain"]
    assert frame.loc[3, "domain_distance"] > 3 * frame.loc[0, "domain_distance"]


def test_out_of_domain_flags_another_domain_more_than_held_out_witnesses(
    turing_set: TrainingSet, judge: LocalJudge, data_dir: Path
) -> None:
    """The judge saw 300 games' witnesses: other games' witnesses are flagged about as often as
    calibrated (5%), long LLM-written doctor's visits several times as often (measured: 6% and
    27%; a Turing judge's reference holds LLM witnesses that write paragraphs too)."""
    games = turing_set.frame["game_id"].drop_duplicates()
    unseen = turing_set.frame[turing_set.frame["game_id"].isin(games.iloc[300:400])]
    witnesses = judge.predict_frame(unseen["dialogue"].tolist())
    visits = pd.read_csv(data_dir / "synthlabs" / "candidates_test.csv")["dialogue"].head(60)
    doctors = judge.predict_frame(visits.tolist(), SpeakerTags.doctor_visit())
    in_domain = out_of_domain_fraction(witnesses["out_of_domain"])
    assert in_domain < 0.15
    assert out_of_domain_fraction(doctors["out_of_domain"]) > max(2 * in_domain, 0.15)
    assert doctors["domain_distance"].median() > witnesses["domain_distance"].median()


def test_local_judge_fulfils_the_judge_contract(judge: LocalJudge, tmp_path: Path) -> None:
    assert isinstance(judge, Judge)
    tags = SpeakerTags.turing()
    texts = ["I: hi\nW: hey there lol", "I: who is this?\nI: hello?"]
    reordered = judge.questionnaire.subset(judge.questionnaire.trait_ids[::-1], "HAL32Q")
    results = judge.rate(texts, reordered, tags, item_ids=["a", "b"])
    assert [r.item_id for r in results] == ["a", "b"]
    assert results[0].ok and list(results[0].ratings) == reordered.trait_ids
    assert results[0].ratings == judge.rate(texts[:1], judge.questionnaire, tags)[0].ratings
    assert results[0].domain_distance > 0 and isinstance(results[0].out_of_domain, bool)
    assert results[1].error_kind == "input" and "rated speaker" in results[1].error
    assert results[1].domain_distance is None and results[1].out_of_domain is None

    other = Questionnaire.model_validate(
        {"name": "x", "traits": [{"id": "t01", "text": "Something else entirely."}]}
    )
    with pytest.raises(JudgeConfigurationError, match="differently worded"):
        judge.rate(texts, other, tags)

    folder = judge.save(tmp_path / "registry-judge")
    built = build_judge({"backend": "local", "model_path": str(folder)})
    assert built.fingerprint() == judge.fingerprint()
