"""Evaluation statistics: CIs, paired tests by prompt, trait shifts by id, best epoch, loaders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from hal_core.evaluation import (
    EpochFile,
    discover_epoch_files,
    evaluate_scores,
    mean_ci,
    paired_t_test,
    ratings_from_results,
    read_responses,
    reward_readings,
    score_table,
    stored_ratings,
)
from hal_core.judging import RatingResult
from hal_core.paper import HAL16Q_PUBLISHED_TRAIT_IDS, PAPER_WEIGHT_TRAIT_IDS, load_paper_weights
from hal_core.questionnaire import Questionnaire
from hal_core.reward import HLReward
from hal_core.tables import TableError


def paper_readings(data_dir: Path, questionnaire):
    """The published weights as the scoring task reads them (fitted ids), with their readings."""
    paper = load_paper_weights(data_dir / "hal16_weights_paper.json")
    return reward_readings(HLReward(paper.weights("fitted"), paper.b), questionnaire, paper)


def scored_frame() -> pd.DataFrame:
    """Two models, epochs 0 and 2, three prompts; epoch 2 rows listed in another order."""
    rows = [
        # model, epoch, prompt, hl, t01, t05
        ("m1", 0, "p1", 1.0, 1, 3),
        ("m1", 0, "p2", 2.0, 2, 3),
        ("m1", 0, "p3", 3.0, 3, 3),
        ("m1", 2, "p3", 5.0, 5, 1),
        ("m1", 2, "p1", 2.0, 4, 1),
        ("m1", 2, "p2", 4.0, 4, 2),
        ("m2", 0, "p1", 0.0, 1, 1),
        ("m2", 0, "p2", 0.0, 1, 1),
        ("m2", 2, "p1", 0.0, 1, 1),
        ("m2", 2, "p2", 0.0, 1, 1),
    ]
    return pd.DataFrame(rows, columns=["model", "epoch", "prompt_id", "hl", "t01", "t05"])


def test_mean_ci_matches_the_t_interval() -> None:
    mean, std, low, high = mean_ci([1, 2, 3, 4])
    half = 3.182446305 * np.std([1, 2, 3, 4], ddof=1) / 2  # t(0.975, df=3) * s / sqrt(4)
    assert (mean, std) == pytest.approx((2.5, 1.2909944))
    assert (low, high) == pytest.approx((2.5 - half, 2.5 + half))
    assert np.isnan(mean_ci([1.0])[2])


def test_paired_t_test_pairs_by_prompt_not_by_position() -> None:
    base = pd.Series([1.0, 2.0, 3.0], index=["p1", "p2", "p3"])
    other = pd.Series([5.0, 2.0, 4.0], index=["p3", "p1", "p2"])  # diffs 1, 2, 2
    test = paired_t_test(base, other)
    # mean diff 5/3, sd 0.57735, t = (5/3) / (0.57735 / sqrt(3)) = 5.0; one-sided p, df = 2.
    assert test.n_pairs == 3
    assert test.mean_diff == pytest.approx(5 / 3)
    assert test.t == pytest.approx(5.0)
    assert test.p == pytest.approx(stats.t.sf(5.0, 2))
    lower = paired_t_test(other, base)
    assert lower.t == pytest.approx(-5.0) and lower.p == pytest.approx(1 - test.p)


def test_summary_reports_difference_tests_and_best_epoch() -> None:
    report = evaluate_scores(scored_frame(), ["t01", "t05"], base_epoch=0)
    summary = report.summary.set_index(["model", "epoch"])
    assert summary.loc[("m1", 0), "mean"] == pytest.approx(2.0)
    assert summary.loc[("m1", 2), "mean"] == pytest.approx(11 / 3)
    assert summary.loc[("m1", 2), "diff_to_base"] == pytest.approx(11 / 3 - 2.0)
    assert summary.loc[("m1", 2), "t"] == pytest.approx(5.0)
    assert np.isnan(summary.loc[("m1", 0), "t"])
    assert report.best_epoch == {"m1": 2, "m2": 0}  # m2 ties: the earliest epoch
    assert report.gains == pytest.approx({"m1": 11 / 3 - 2.0, "m2": 0.0})


def test_trait_shifts_are_keyed_by_trait_id_whatever_the_column_order() -> None:
    frame = scored_frame()
    report = evaluate_scores(frame, ["t01", "t05"])
    reordered = evaluate_scores(
        frame[["model", "epoch", "prompt_id", "hl", "t05", "t01"]], ["t05", "t01"]
    )
    shifts = report.shifts.set_index(["model", "epoch", "trait_id"])["shift"]
    assert shifts[("m1", 2, "t01")] == pytest.approx(13 / 3 - 2.0)
    assert shifts[("m1", 2, "t05")] == pytest.approx(4 / 3 - 3.0)
    assert shifts[("m1", 0, "t01")] == pytest.approx(0.0, abs=1e-12)  # the base itself
    other = reordered.shifts.set_index(["model", "epoch", "trait_id"])["shift"]
    pd.testing.assert_series_equal(shifts.sort_index(), other.sort_index())


def test_missing_base_epoch_is_an_error() -> None:
    with pytest.raises(ValueError, match="has no base epoch 1"):
        evaluate_scores(scored_frame(), ["t01"], base_epoch=1)


def test_published_questionnaire_pairs_14_of_16_positions_with_another_traits_weight(
    data_dir: Path,
) -> None:
    questionnaire = Questionnaire.load(data_dir / "questionnaires/hal16q_published.json")
    assert questionnaire.trait_ids == list(HAL16Q_PUBLISHED_TRAIT_IDS)
    # w[k] was fitted on these HAL32Q traits (data README); applied by position it meets
    # the same trait at positions 1 and 7 only.
    fitted_on = [f"t{i:02d}" for i in (1, 2, 3, 4, 5, 6, 7, 12, 15, 17, 20, 21, 24, 26, 28, 32)]
    assert fitted_on == list(PAPER_WEIGHT_TRAIT_IDS)
    pairs = zip(fitted_on, questionnaire.trait_ids, strict=True)
    same = [k + 1 for k, (a, b) in enumerate(pairs) if a == b]
    assert same == [1, 7]
    scoring = paper_readings(data_dir, questionnaire)
    payload = json.loads((data_dir / "hal16_weights_paper.json").read_text())
    # paper-compatible: w[k] on the statement at published position k
    assert list(scoring.reward.weights) == list(HAL16Q_PUBLISHED_TRAIT_IDS)
    assert list(scoring.reward.weights.values()) == payload["w"]
    # by id: the fitted weight of each trait the published prompt also asks about
    fitted = dict(zip(fitted_on, payload["w"], strict=True))
    shared = [t for t in HAL16Q_PUBLISHED_TRAIT_IDS if t in fitted]
    assert len(shared) == 9 and dict(scoring.by_id.weights) == {t: fitted[t] for t in shared}
    assert scoring.reward.bias == scoring.by_id.bias == payload["b"]
    assert "14 of 16" in scoring.explanation and "9 traits" in scoring.explanation


def test_paper_weights_on_hal32q_are_read_by_the_ids_they_were_fitted_on(
    data_dir: Path,
) -> None:
    from hal_core.questionnaire import Questionnaire

    hal32q = Questionnaire.load(data_dir / "questionnaires/hal32q.json")
    scoring = paper_readings(data_dir, hal32q)
    payload = json.loads((data_dir / "hal16_weights_paper.json").read_text())
    assert scoring.by_id is None and scoring.explanation == ""
    assert dict(scoring.reward.weights) == dict(
        zip(PAPER_WEIGHT_TRAIT_IDS, payload["w"], strict=True)
    )


def test_published_statement_ids_are_their_nearest_hal32q_traits(data_dir: Path) -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    from hal_core.questionnaire import Questionnaire

    published = list(
        Questionnaire.load(data_dir / "questionnaires/hal16q_published.json").texts().values()
    )
    hal32q = Questionnaire.load(data_dir / "questionnaires/hal32q.json")
    vectorizer = TfidfVectorizer().fit([*published, *hal32q.texts().values()])
    similarity = vectorizer.transform(published) @ vectorizer.transform(hal32q.texts().values()).T
    nearest = [hal32q.trait_ids[i] for i in similarity.toarray().argmax(axis=1)]
    assert nearest == list(HAL16Q_PUBLISHED_TRAIT_IDS)


def test_two_scores_paper_compatible_reproduces_hal16_score_and_by_id_uses_fitted_ids(
    data_dir: Path,
) -> None:
    questionnaire = Questionnaire.load(data_dir / "questionnaires/hal16q_published.json")
    scoring = paper_readings(data_dir, questionnaire)
    files = discover_epoch_files(data_dir / "aligned_outputs", ["Llama-3.2-1B-Instruct"])
    assert [f.epoch for f in files] == [0, 1, 2, 3, 4, 5, 6, 8, 10]
    responses = read_responses(files[-1])
    ratings = stored_ratings(responses, questionnaire)
    compatible = score_table(responses, ratings, scoring.reward)
    np.testing.assert_allclose(compatible["hl"], responses["hal16_score"], atol=1e-9)

    # by id, computed here from the raw lists: position k holds HAL16Q_PUBLISHED_TRAIT_IDS[k]
    payload = json.loads((data_dir / "hal16_weights_paper.json").read_text())
    fitted = dict(zip(PAPER_WEIGHT_TRAIT_IDS, payload["w"], strict=True))
    lists = [json.loads(cell) for cell in responses["likert_evaluation"]]
    expected = [
        payload["b"]
        + sum(
            fitted[t] * v
            for t, v in zip(HAL16Q_PUBLISHED_TRAIT_IDS, row, strict=True)
            if t in fitted
        )
        for row in lists
    ]
    by_id = score_table(responses, ratings, scoring.by_id)
    np.testing.assert_allclose(by_id["hl"], expected, atol=1e-9)
    assert np.abs(by_id["hl"] - compatible["hl"]).max() > 0.5  # the two readings differ


def write_responses(folder: Path, prompts: list[str], ratings: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "samples_epoch_00_scored_x.csv"
    pd.DataFrame(
        {
            "prompt": prompts,
            "dialogue": ["P: hi\nD: hello"] * len(prompts),
            "likert_evaluation": ratings,
        }
    ).to_csv(path, index=False)
    return path


def test_repeated_prompt_is_an_error_naming_file_and_rows(tmp_path: Path) -> None:
    path = write_responses(tmp_path / "m", ["a", "b", "a"], ["[1]"] * 3)
    with pytest.raises(TableError, match=r"samples_epoch_00_scored_x\.csv rows \[1, 3\]"):
        read_responses(EpochFile("m", 0, path))


def test_discovery_rejects_unknown_model_folders(tmp_path: Path) -> None:
    write_responses(tmp_path / "m", ["a"], ["[1]"])
    assert [(f.model, f.epoch) for f in discover_epoch_files(tmp_path)] == [("m", 0)]
    with pytest.raises(FileNotFoundError, match=r"no model folders \['nope'\]"):
        discover_epoch_files(tmp_path, ["nope"])


def test_bad_stored_rating_names_file_and_row(tmp_path: Path, data_dir: Path) -> None:
    questionnaire = Questionnaire.load(data_dir / "questionnaires/hal16q_published.json")
    good = json.dumps([3] * 16)
    path = write_responses(tmp_path / "m", ["a", "b"], [good, json.dumps([3] * 15 + [7])])
    responses = read_responses(EpochFile("m", 0, path))
    with pytest.raises(TableError, match=r"samples_epoch_00_scored_x\.csv row 2: .*outside"):
        stored_ratings(responses, questionnaire)


def test_judge_failures_are_recorded_not_dropped() -> None:
    index = pd.Index([10, 11, 12])
    results = [
        RatingResult(item_id="a", ratings={"t01": 4, "t05": 2}),
        RatingResult(item_id="b", error="timeout"),
        RatingResult(item_id="c", ratings={"t01": 4}),
    ]
    ratings, failures = ratings_from_results(results, ["t01", "t05"], index)
    assert ratings.loc[10].tolist() == [4.0, 2.0]
    assert ratings.loc[[11, 12]].isna().all().all()
    assert [(f["item_id"], f["error"]) for f in failures] == [
        ("b", "timeout"),
        ("c", "missing ratings for ['t05']"),
    ]
    responses = pd.DataFrame(
        {"_row": [1, 2, 3], "model": "m", "epoch": 0, "prompt_id": ["x", "y", "z"]}, index=index
    )
    scored = score_table(responses, ratings, HLReward({"t01": 1.0}, 0.0))
    assert scored.index.tolist() == [10] and scored["hl"].tolist() == [4.0]


def test_a_project_reward_scores_by_its_trait_ids_without_a_second_reading(
    data_dir: Path,
) -> None:
    questionnaire = Questionnaire.load(data_dir / "questionnaires/hal16q_published.json")
    reward = HLReward({"t05": 2.0, "t01": -1.0}, bias=0.5)
    scoring = reward_readings(reward, questionnaire)
    assert scoring.reward is reward and scoring.by_id is None and scoring.explanation == ""
    responses = pd.DataFrame(
        {"_row": [1, 2], "model": "m", "epoch": 0, "prompt_id": ["a", "b"], "_source": "f.csv"}
    )
    ratings = pd.DataFrame({"t05": [3.0, 1.0], "t01": [1.0, 5.0]})
    assert score_table(responses, ratings, scoring.reward)["hl"].tolist() == [5.5, -2.5]
    off_scale = ratings.assign(t01=[1.0, 7.0])
    with pytest.raises(ValueError, match=r"ratings of f\.csv row 2, column t01: 7\.0"):
        score_table(responses, off_scale, scoring.reward)


def test_a_cached_rating_run_becomes_ratings_failures_and_out_of_domain_flags(
    data_dir: Path, tmp_path: Path
) -> None:
    from hal_core.dialogue import SpeakerTags
    from hal_core.evaluation import judged_ratings
    from hal_core.judges import rate_cached
    from hal_core.rating_cache import RatingCache

    questionnaire = Questionnaire.load(data_dir / "questionnaires/hal16q_published.json")

    class EchoJudge:
        """Rates every trait 3, except a dialogue without a patient line (kind input)."""

        calls = 0

        def fingerprint(self) -> str:
            return "echo"

        def rate(self, dialogues, questionnaire, tags, item_ids=None):
            EchoJudge.calls += len(dialogues)
            return [
                RatingResult(item_id=i, error="no rated speaker", error_kind="input")
                if "P:" not in text
                else RatingResult(item_id=i, ratings=dict.fromkeys(questionnaire.trait_ids, 3))
                for i, text in zip(item_ids, dialogues, strict=True)
            ]

    texts = ["D: hi", "P: yo\nD: ok", "P: yo\nD: ok"]
    index = pd.Index([7, 8, 9])
    with RatingCache(tmp_path / "ratings.sqlite") as cache:
        run = rate_cached(EchoJudge(), texts, questionnaire, SpeakerTags.doctor_visit(), cache)
        again = rate_cached(EchoJudge(), texts, questionnaire, SpeakerTags.doctor_visit(), cache)
    assert EchoJudge.calls == 2  # two distinct texts, asked once; the rerun is served by cache
    assert (again.stats.cache_hits, again.stats.requested) == (2, 0)
    judged = judged_ratings(run, questionnaire.trait_ids, index)
    assert judged.ratings.loc[[8, 9]].eq(3.0).all().all() and judged.ratings.loc[7].isna().all()
    assert [(f["index"], f["error_kind"]) for f in judged.failures] == [(7, "input")]
    assert judged.unreadable.tolist() == [7]
    assert judged.out_of_domain.isna().all()  # this judge never says
