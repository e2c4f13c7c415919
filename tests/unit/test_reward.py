import json
import re

import numpy as np
import pandas as pd
import pytest

from hal_core.questionnaire import Questionnaire
from hal_core.reward import (
    PAPER_HAL16_TRAIT_IDS,
    HLReward,
    MissingTraitError,
    RatingsError,
    RewardConfig,
    RewardFileError,
    TraitLogisticRegression,
    fit_reward,
    paired_accuracy,
)
from hal_core.reward_curves import held_out_curves
from hal_core.tables import read_table, witness_ratings


def _synthetic(n_games: int = 150, seed: int = 0) -> pd.DataFrame:
    """Games whose human witness rates high on t02 and low on t04; t01/t03 are noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for game in range(n_games):
        for is_human in (1, 0):
            ratings = rng.integers(1, 6, size=4).astype(float)
            ratings[1] = np.clip(ratings[1] + (2 if is_human else -2), 1, 5)
            ratings[3] = np.clip(ratings[3] - (2 if is_human else -2), 1, 5)
            rows.append([game, is_human, *ratings])
    return pd.DataFrame(rows, columns=["game_id", "is_human", "t01", "t02", "t03", "t04"])


def test_selection_keeps_informative_traits_and_refits():
    data = _synthetic()
    model = TraitLogisticRegression(C=1.0, selection_threshold=0.2).fit(
        data[["t01", "t02", "t03", "t04"]], data["is_human"]
    )
    assert model.selected_trait_ids_ == ["t02", "t04"]
    assert model.coef_["t02"] > 0 > model.coef_["t04"]
    assert set(model.full_coef_.index) == {"t01", "t02", "t03", "t04"}


def test_scores_do_not_depend_on_column_order():
    data = _synthetic()
    traits = ["t01", "t02", "t03", "t04"]
    model = TraitLogisticRegression().fit(data[traits], data["is_human"])
    shuffled = data[["t04", "t01", "t03", "t02"]]
    # a frame's memory layout may pick another summation order (last bits, < 1e-14 on scores
    # of magnitude < 10); a trait matched to the wrong column moves a score by > 0.1
    np.testing.assert_allclose(
        model.decision_function(data[traits]), model.decision_function(shuffled), rtol=0, atol=1e-12
    )
    refit_on_reordered = TraitLogisticRegression().fit(shuffled, data["is_human"])
    np.testing.assert_allclose(  # unsorted columns would move liblinear's weights by ~1e-3
        refit_on_reordered.decision_function(data[traits]),
        model.decision_function(data[traits]),
        rtol=0,
        atol=1e-12,
    )


def test_renamed_traits_give_the_same_linear_reward_by_id():
    data = _synthetic()
    renamed = {"t01": "t09", "t02": "t03", "t03": "t01", "t04": "t02"}
    model = TraitLogisticRegression().fit(data[list(renamed)], data["is_human"])
    other = TraitLogisticRegression().fit(
        data[list(renamed)].rename(columns=renamed), data["is_human"]
    )
    assert sorted(other.selected_trait_ids_) == sorted(
        renamed[t] for t in model.selected_trait_ids_
    )
    # liblinear visits columns in id order, so a renaming moves weights within its tolerance
    for old, new in renamed.items():
        assert other.full_coef_[new] == pytest.approx(model.full_coef_[old], abs=1e-2)
    for old in model.selected_trait_ids_:
        assert other.coef_[renamed[old]] == pytest.approx(model.coef_[old], abs=1e-2)


def test_reward_json_round_trip_and_missing_trait(tmp_path):
    reward = HLReward(weights={"t02": 1.5, "t01": -0.5}, bias=0.25)
    loaded = HLReward.load(reward.save(tmp_path / "reward.json"))
    assert loaded.weights == reward.weights and loaded.bias == reward.bias
    assert json.loads((tmp_path / "reward.json").read_text())["version"] == reward.version
    ratings = pd.DataFrame({"t01": [1.0, 5.0], "t02": [4.0, 2.0]})
    np.testing.assert_allclose(loaded.score(ratings), [-0.5 + 6 + 0.25, -2.5 + 3 + 0.25])
    with pytest.raises(MissingTraitError, match="t02"):
        loaded.score(ratings[["t01"]])


def test_paired_accuracy_counts_games_and_halves_ties():
    scores = np.array([2.0, 1.0, 0.0, 3.0, 1.0, 1.0])
    is_human = np.array([1, 0, 1, 0, 1, 0])
    games = np.array([1, 1, 2, 2, 3, 3])
    assert paired_accuracy(scores, is_human, games) == pytest.approx((1 + 0 + 0.5) / 3)


@pytest.fixture(scope="module")
def gpt5_fit(data_dir):
    questionnaire = Questionnaire.load(data_dir / "questionnaires" / "hal32q.json")
    table = read_table(data_dir / "turing" / "ratings32_gpt-5.csv")
    witnesses = witness_ratings(table, questionnaire)
    return fit_reward(witnesses, questionnaire.trait_ids, RewardConfig())


def test_paper_protocol_reproduces_published_accuracy(gpt5_fit):
    metrics = gpt5_fit.metrics()
    # Accuracies count test rows, so float noise moves them only by flipping a prediction: the
    # test row nearest the boundary scores 2.7e-5 (refit: 3.3e-3), far above the last-bit
    # noise of another CPU (~1e-14). Measured 0.77467 / 0.77118: the first window holds 10
    # flips (4.5e-5 each); the refit's holds one flip either way (one is 9e-4).
    assert metrics["cv.accuracy.mean"] == pytest.approx(0.7747, abs=5e-4)
    assert metrics["cv_refit.accuracy"] == pytest.approx(0.7712, abs=1.5e-3)
    assert 0.72 < metrics["cv_grouped.accuracy"] < 0.82
    assert 0.80 < metrics["paired.accuracy"] < 0.92


def test_grouped_curves_are_those_of_the_out_of_fold_scores(gpt5_fit, data_dir):
    questionnaire = Questionnaire.load(data_dir / "questionnaires" / "hal32q.json")
    table = read_table(data_dir / "turing" / "ratings32_gpt-5.csv")
    labels = witness_ratings(table, questionnaire)["is_human"].to_numpy(int)
    curves = gpt5_fit.grouped_curves
    again = held_out_curves(gpt5_fit.grouped_scores, labels)
    assert curves.auc == pytest.approx(again.auc, abs=1e-12)
    pd.testing.assert_frame_equal(curves.calibration, again.calibration)
    # measured 0.841 out of fold; the in-sample scores flatter the reward (0.86)
    assert 0.5 < curves.auc <= 1.0 and curves.auc > 0.8
    assert curves.auc < held_out_curves(gpt5_fit.train_scores, labels).auc
    assert 0 < curves.brier < 0.25 and 0 <= curves.ece < 0.1
    assert curves.calibration.n.sum() == len(labels)
    metrics = gpt5_fit.metrics()
    assert metrics["cv_grouped.auc"] == pytest.approx(curves.auc, abs=1e-12)
    assert {"cv_grouped.brier", "cv_grouped.ece"} <= set(metrics)


def test_selection_and_weights_match_the_published_reward(gpt5_fit, data_dir):
    assert tuple(gpt5_fit.selected_trait_ids) == PAPER_HAL16_TRAIT_IDS
    published = HLReward.from_paper_weights(data_dir / "hal16_weights_paper.json")
    for trait_id, weight in published.weights.items():
        assert gpt5_fit.reward.weights[trait_id] == pytest.approx(weight, abs=1e-3)
    assert gpt5_fit.reward.bias == pytest.approx(published.bias, abs=1e-3)


# --- reward files and ratings that break a rule -------------------------------------------


def _payload(**changes) -> dict:
    payload = {"weights": {"t01": 0.5, "t02": -1.0}, "bias": 0.25}
    payload.update(changes)
    return payload


@pytest.mark.parametrize(
    ("payload", "key"),
    [
        (_payload(bias=float("nan")), "bias"),
        (_payload(bias=float("inf")), "bias"),
        (_payload(weights={"t01": 0.5, "t02": float("nan")}), "weights.t02"),
        (_payload(weights={"t01": float("-inf")}), "weights.t01"),
        (_payload(weights={"t01": "abc"}), "weights.t01"),
        (_payload(bias=None), "bias"),
        ({"weights": {"t01": 1.0}}, "bias"),
        (_payload(weights={}), "weights"),
    ],
)
def test_reward_file_with_a_bad_number_names_the_file_and_key(tmp_path, payload, key):
    path = tmp_path / "reward.json"
    # json.dumps writes NaN/Infinity, as a careless writer would
    path.write_text(json.dumps(payload))
    with pytest.raises(RewardFileError) as error:
        HLReward.load(path)
    assert str(path) in str(error.value) and f"'{key}'" in str(error.value)


def test_paper_weights_file_with_nan_is_refused(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"w": [0.1] * 15 + [float("nan")], "b": 0.0}))
    with pytest.raises(RewardFileError, match=r"w\[15\]"):
        HLReward.from_paper_weights(path)


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        (7, "off the rating scale 1-5"),
        (-1, "off the rating scale 1-5"),
        (float("inf"), "off the rating scale 1-5"),
        (float("nan"), "missing"),
        (None, "missing"),
        ("abc", "not a number"),
    ],
)
def test_scoring_a_bad_rating_names_row_column_and_rule(value, rule):
    reward = HLReward(weights={"t01": 1.0, "t02": -0.5}, bias=0.0)
    ratings = pd.DataFrame({"t01": [1, 2, 3], "t02": [4, 5, 1]}, index=[10, 11, 12], dtype=object)
    ratings.loc[11, "t02"] = value
    with pytest.raises(RatingsError) as error:
        reward.score(ratings)
    message = str(error.value)
    assert "row 11 column t02" in message and rule in message and "rule:" in message


def test_bad_rating_is_named_by_its_file_row(tmp_path):
    path = tmp_path / "ratings.csv"
    pd.DataFrame({"t01": [1, 2, 9], "t02": [3, 3, 3]}).to_csv(path, index=False)
    table = read_table(path)
    with pytest.raises(RatingsError, match=rf"{path}: row 3 column t01: 9 "):
        HLReward(weights={"t01": 1.0, "t02": 1.0}, bias=0.0).score(table)


def test_integer_and_nullable_integer_ratings_score_like_floats():
    reward = HLReward(weights={"t01": 0.5, "t02": -1.0}, bias=0.25)
    ints = pd.DataFrame({"t02": [1, 5], "t01": [3, 4]})
    expected = reward.score(ints.astype(float))
    np.testing.assert_allclose(reward.score(ints), expected)
    np.testing.assert_allclose(reward.score(ints.astype("Int64")), expected)
    np.testing.assert_allclose(expected, [0.25 + 1.5 - 1.0, 0.25 + 2.0 - 5.0])


# --- the shape kind and its JSON ------------------------------------------------------------


def test_shape_reward_scores_per_level_and_interpolates_between_levels():
    reward = HLReward(
        shapes={"t03": (-1.0, 0.0, 0.5, 0.5, 2.0), "t01": (0, 0, 0, 0, 1.0)}, bias=1.0
    )
    assert reward.kind == "shape" and reward.trait_ids == ["t03", "t01"]
    ratings = pd.DataFrame({"t01": [5, 1, 1], "t03": [1, 3, 4.5]})
    np.testing.assert_allclose(reward.score(ratings), [1 - 1 + 1, 1 + 0.5, 1 + 1.25])
    contributions = reward.contributions(ratings)
    assert list(contributions.columns) == ["t03", "t01"]
    assert reward.contribution_ranges() == {"t03": 3.0, "t01": 1.0}


def test_reward_json_says_its_kind_and_loading_dispatches_on_it(tmp_path):
    shape = HLReward(shapes={"t02": (0.0, 1.0, 2.0, 2.5, 3.0)}, bias=-1.0, metadata={"C": 0.01})
    linear = HLReward(weights={"t02": 0.75}, bias=-1.0)
    for reward in (shape, linear):
        path = reward.save(tmp_path / f"{reward.kind}.json")
        payload = json.loads(path.read_text())
        assert payload["kind"] == reward.kind and payload["version"] == reward.version
        loaded = HLReward.load(path)
        assert loaded == reward and loaded.kind == reward.kind
    assert json.loads((tmp_path / "shape.json").read_text())["shapes"]["t02"]["4"] == 2.5
    assert shape.version != HLReward(shapes={"t02": (0.0, 1.0, 2.0, 2.5, 3.1)}, bias=-1.0).version


def test_format_one_reward_files_load_as_linear_with_their_old_version(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"format": "hal-reward/1", "version": "x", "weights": {"t01": 2.0},
                                "bias": 0.5, "metadata": {}}))  # fmt: skip
    reward = HLReward.load(path)
    assert reward.kind == "linear" and reward.weights == {"t01": 2.0}
    # the version hash of a linear reward did not change with the new format
    assert reward.version == "5fc92660f9e9e980"


@pytest.mark.parametrize(
    ("payload", "key"),
    [
        ({"kind": "forest", "bias": 0.0}, "kind"),
        ({"kind": "shape", "bias": 0.0, "shapes": {"t01": {"1": 0.0, "2": 1.0}}}, "shapes.t01"),
        ({"kind": "shape", "bias": 0.0, "shapes": {"t01": dict.fromkeys("12345", float("nan"))}},
         "shapes.t01.1"),
        ({"kind": "shape", "bias": 0.0, "scale": {"min": 5, "max": 1},
          "shapes": {"t01": dict.fromkeys("12345", 0.0)}}, "scale"),
    ],
)  # fmt: skip
def test_shape_reward_file_that_breaks_a_rule_names_the_key(tmp_path, payload, key):
    path = tmp_path / "reward.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(RewardFileError, match=rf"{path}: key '{re.escape(key)}'"):
        HLReward.load(path)


def test_hal_score_stops_on_a_nan_reward_or_an_off_scale_rating(tmp_path):
    from hal_core.scoring import RatingValueError, hl_scores
    from hal_core.settings import HalSettings
    from tasks.scoring import load_reward, read_ratings

    def score(ratings_path, reward_path):  # what the score_ratings flow does, task by task
        reward = load_reward.fn(str(reward_path), HalSettings(home=tmp_path))
        return hl_scores(read_ratings.fn(ratings_path)[1], reward)

    ratings = tmp_path / "ratings.csv"
    pd.DataFrame({"t01": [1, 3], "t02": [5, 2]}).to_csv(ratings, index=False)
    broken = tmp_path / "reward.json"
    broken.write_text('{"weights": {"t01": NaN, "t02": 1.0}, "bias": 0.0}')
    with pytest.raises(RewardFileError, match=rf"{broken}: key 'weights.t01'"):
        score(ratings, broken)
    good = HLReward(shapes={"t01": (0, 1, 2, 3, 4.0), "t02": (0, 0, 1, 1, 1.0)}, bias=0.5)
    path = good.save(tmp_path / "shape.json")
    np.testing.assert_allclose(score(ratings, path)["hl"], [0.5 + 0 + 1, 0.5 + 2 + 0])
    pd.DataFrame({"t01": [1, 7], "t02": [5, 2]}).to_csv(ratings, index=False)
    with pytest.raises(RatingValueError, match=rf"{ratings} row 2, column t01: 7 is not a rating"):
        score(ratings, path)
