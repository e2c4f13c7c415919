"""The glass-box (shape) reward: per-level shapes by trait id, accuracy on the real ratings."""

import numpy as np
import pandas as pd
import pytest

from hal_core.folds import grouped_folds
from hal_core.questionnaire import Questionnaire
from hal_core.reward import HLReward, TraitLogisticRegression, paired_accuracy
from hal_core.reward_comparison import out_of_fold_scores
from hal_core.shape_reward import ShapeRewardRegression, thermometer
from hal_core.tables import read_table, witness_ratings


def _u_shaped(n_games: int = 300, seed: int = 0) -> pd.DataFrame:
    """Humans rate 3 on t02 (AIs sit at 1 or 5), high on t01; t03 is noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for game in range(n_games):
        for is_human in (1, 0):
            t01 = np.clip(rng.integers(1, 6) + (1 if is_human else -1), 1, 5)
            t02 = rng.choice([2, 3, 4]) if is_human else rng.choice([1, 5, 3], p=[0.45, 0.45, 0.1])
            rows.append([game, is_human, t01, t02, rng.integers(1, 6)])
    return pd.DataFrame(rows, columns=["game_id", "is_human", "t01", "t02", "t03"])


def test_thermometer_codes_steps_and_interpolates_fractions():
    coded = thermometer(np.array([[1.0], [3.0], [5.0], [3.5]]), (1, 5))
    np.testing.assert_array_equal(coded, [[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 0.5, 0]])


def test_shapes_recover_a_non_monotone_trait_and_centre_on_the_average_witness():
    data = _u_shaped()
    X = data[["t01", "t02", "t03"]]
    model = ShapeRewardRegression(C=0.1).fit(X, data["is_human"])
    t02 = model.shapes_.loc["t02"]
    assert t02[3] > t02[1] + 1 and t02[3] > t02[5] + 1  # an inverted U a weight cannot draw
    t01 = model.shapes_.loc["t01"]
    assert t01[5] > t01[3] + 1 > t01[1] + 2  # rises with the rating
    assert model.shapes_.loc["t03"].abs().max() < model.shapes_.loc["t02"].abs().max() / 3
    for trait_id in X.columns:  # centred: mean contribution over the training witnesses is 0
        mean = np.interp(X[trait_id], model.shapes_.columns, model.shapes_.loc[trait_id]).mean()
        assert mean == pytest.approx(0.0, abs=1e-9)
    reward = model.to_reward()
    assert reward.kind == "shape" and set(reward.trait_ids) == {"t01", "t02", "t03"}
    np.testing.assert_allclose(model.decision_function(X), reward.score(X))


def test_reordered_or_renamed_traits_give_the_same_reward_by_id():
    data = _u_shaped()
    y = data["is_human"]
    model = ShapeRewardRegression(C=0.05).fit(data[["t01", "t02", "t03"]], y)
    reordered = ShapeRewardRegression(C=0.05).fit(data[["t03", "t01", "t02"]], y)
    assert reordered.to_reward() == model.to_reward()
    renamed = {"t01": "t09", "t02": "t04", "t03": "t01"}
    other = ShapeRewardRegression(C=0.05).fit(data[list(renamed)].rename(columns=renamed), y)
    for old, new in renamed.items():
        np.testing.assert_allclose(
            other.shapes_.loc[new].to_numpy(), model.shapes_.loc[old].to_numpy(), atol=1e-8
        )
    assert other.intercept_ == pytest.approx(model.intercept_, abs=1e-8)


def test_unseen_levels_take_their_neighbours_contribution():
    data = _u_shaped()
    data["t03"] = data["t03"].clip(2, 4)  # nobody rated 1 or 5 on t03
    model = ShapeRewardRegression(C=0.1).fit(data[["t01", "t02", "t03"]], data["is_human"])
    t03 = model.shapes_.loc["t03"]
    assert t03[1] == t03[2] and t03[5] == t03[4]


def test_inner_cv_needs_games_and_picks_c_from_the_grid():
    data = _u_shaped(120)
    X, y = data[["t01", "t02", "t03"]], data["is_human"]
    with pytest.raises(ValueError, match="pass groups"):
        ShapeRewardRegression(C=None).fit(X, y)
    model = ShapeRewardRegression(C=None, Cs=(0.01, 1.0)).fit(X, y, groups=data["game_id"])
    assert model.C_ in (0.01, 1.0) and set(model.cv_scores_) == {0.01, 1.0}
    again = ShapeRewardRegression(C=None, Cs=(0.01, 1.0)).fit(X, y, groups=data["game_id"])
    assert again.to_reward() == model.to_reward()


@pytest.fixture(scope="module")
def gpt5_witnesses(data_dir):
    questionnaire = Questionnaire.load(data_dir / "questionnaires" / "hal32q.json")
    table = read_table(data_dir / "turing" / "ratings32_gpt-5.csv")
    return witness_ratings(table, questionnaire), questionnaire.trait_ids


def test_glass_box_beats_the_l1_reward_on_the_same_game_grouped_folds(gpt5_witnesses):
    """Measured on fold seed 42: shape 0.815 / paired 0.894, L1 0.768 / 0.847 (the mean of four
    fold seeds in bench/fit_reward.py: 0.816 / 0.896 and 0.769 / 0.849).
    The asserts keep a margin below those figures."""
    witnesses, trait_ids = gpt5_witnesses
    X = witnesses[trait_ids]
    y = witnesses["is_human"].to_numpy()
    games = witnesses["game_id"].to_numpy()
    folds = grouped_folds(games, 10, 42)
    for train, test in folds:  # both witnesses of a game on the same side
        assert not set(games[train]) & set(games[test])
    shape = out_of_fold_scores(lambda: ShapeRewardRegression(C=0.01), X, y, games, folds)
    l1 = out_of_fold_scores(TraitLogisticRegression, X, y, games, folds)
    shape_accuracy = ((shape > 0) == y).mean()
    l1_accuracy = ((l1 > 0) == y).mean()
    # measured 0.8151 and 0.8941; bounds ~3% below, so about 25 flipped witnesses (or 11
    # flipped games) are needed to fail, far more than another CPU's last-bit sums can flip
    assert shape_accuracy >= 0.79
    assert paired_accuracy(shape, y, games) >= 0.87
    assert shape_accuracy >= l1_accuracy + 0.02


def test_shape_reward_is_an_hl_reward_every_caller_can_load(tmp_path, gpt5_witnesses):
    witnesses, trait_ids = gpt5_witnesses
    model = ShapeRewardRegression(C=0.01).fit(witnesses[trait_ids], witnesses["is_human"])
    path = model.to_reward().save(tmp_path / "reward.json")
    loaded = HLReward.load(path)
    shuffled = witnesses[trait_ids[::-1]]
    np.testing.assert_allclose(loaded.score(shuffled), model.decision_function(witnesses))
