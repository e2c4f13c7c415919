"""Evaluation statistics: CIs, paired tests by prompt, trait shifts by id, best epoch, loaders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from hal_core.evaluation import (
    PUBLISHED_HAL16Q_TRAIT_IDS,
    EpochFile,
    discover_epoch_files,
    evaluate_scores,
    load_rating_questionnaire,
    load_reward,
    mean_ci,
    paired_t_test,
    ratings_from_results,
    read_responses,
    score_table,
    stored_ratings,
)
from hal_core.judging import RatingResult
from hal_core.reward import HLReward
from hal_core.tables import TableError


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
    assert shifts[("m1", 0, "t01")] == 0.0
    other = reordered.shifts.set_index(["model", "epoch", "trait_id"])["shift"]
    pd.testing.assert_series_equal(shifts.sort_index(), other.sort_index())


def test_missing_base_epoch_is_an_error() -> None:
    with pytest.raises(ValueError, match="has no base epoch 1"):
        evaluate_scores(scored_frame(), ["t01"], base_epoch=1)


def test_published_questionnaire_pairs_14_of_16_positions_with_another_traits_weight(
    data_dir: Path,
) -> None:
    questionnaire = load_rating_questionnaire(data_dir / "questionnaires/hal16q_published.json")
    assert questionnaire.trait_ids == list(PUBLISHED_HAL16Q_TRAIT_IDS)
    # w[k] was fitted on these HAL32Q traits (data README); applied by position it meets
    # the same trait at positions 1 and 7 only.
    fitted_on = [f"t{i:02d}" for i in (1, 2, 3, 4, 5, 6, 7, 12, 15, 17, 20, 21, 24, 26, 28, 32)]
    pairs = zip(fitted_on, questionnaire.trait_ids, strict=True)
    same = [k + 1 for k, (a, b) in enumerate(pairs) if a == b]
    assert same == [1, 7]
    reward = load_reward(data_dir / "hal16_weights_paper.json", questionnaire)
    weights = json.loads((data_dir / "hal16_weights_paper.json").read_text())["w"]
    assert list(reward.weights.values()) == weights
    assert list(reward.weights) == list(PUBLISHED_HAL16Q_TRAIT_IDS)


def test_published_statement_ids_are_their_nearest_hal32q_traits(data_dir: Path) -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    from hal_core.questionnaire import Questionnaire

    published = list(
        load_rating_questionnaire(data_dir / "questionnaires/hal16q_published.json")
        .texts()
        .values()
    )
    hal32q = Questionnaire.load(data_dir / "questionnaires/hal32q.json")
    vectorizer = TfidfVectorizer().fit([*published, *hal32q.texts().values()])
    similarity = vectorizer.transform(published) @ vectorizer.transform(hal32q.texts().values()).T
    nearest = [hal32q.trait_ids[i] for i in similarity.toarray().argmax(axis=1)]
    assert nearest == list(PUBLISHED_HAL16Q_TRAIT_IDS)


def test_recorded_ratings_reproduce_the_stored_score_of_one_file(data_dir: Path) -> None:
    questionnaire = load_rating_questionnaire(data_dir / "questionnaires/hal16q_published.json")
    reward = load_reward(data_dir / "hal16_weights_paper.json", questionnaire)
    files = discover_epoch_files(data_dir / "aligned_outputs", ["Llama-3.2-1B-Instruct"])
    assert [f.epoch for f in files] == [0, 1, 2, 3, 4, 5, 6, 8, 10]
    responses = read_responses(files[-1])
    scored = score_table(responses, stored_ratings(responses, questionnaire), reward)
    np.testing.assert_allclose(scored["hl"], responses["hal16_score"], atol=1e-9)


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
    questionnaire = load_rating_questionnaire(data_dir / "questionnaires/hal16q_published.json")
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


def test_project_reward_json_scores_by_its_trait_ids(tmp_path: Path, data_dir: Path) -> None:
    questionnaire = load_rating_questionnaire(data_dir / "questionnaires/hal16q_published.json")
    path = HLReward({"t05": 2.0, "t01": -1.0}, bias=0.5).save(tmp_path / "reward.json")
    reward = load_reward(path, questionnaire)
    ratings = pd.DataFrame({"t01": [1.0, 5.0], "t05": [3.0, 1.0]})
    assert reward.score(ratings).tolist() == [5.5, -2.5]


def test_a_judge_plugs_into_the_rating_task(data_dir: Path) -> None:
    from hal_core.dialogue import SpeakerTags
    from tasks.evaluation import rate_responses

    questionnaire = load_rating_questionnaire(data_dir / "questionnaires/hal16q_published.json")

    class EchoJudge:
        """Rates every trait 3 except the first dialogue, which fails."""

        def fingerprint(self) -> str:
            return "echo"

        def rate(self, dialogues, questionnaire, tags, item_ids=None):
            assert tags == SpeakerTags.doctor_visit()
            return [
                RatingResult(item_id=i, error="boom")
                if n == 0
                else RatingResult(item_id=i, ratings=dict.fromkeys(questionnaire.trait_ids, 3))
                for n, i in enumerate(item_ids)
            ]

    responses = pd.DataFrame(
        {"model": "m", "epoch": 2, "prompt_id": ["a", "b"], "dialogue": ["P: hi", "P: yo"]}
    )
    ratings, failures = rate_responses.fn(responses, questionnaire, judge=EchoJudge())
    assert failures == [{"index": 0, "item_id": "m/e02/a", "error": "boom"}]
    assert ratings.loc[1].tolist() == [3.0] * 16 and ratings.loc[0].isna().all()
