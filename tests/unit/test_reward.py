import json

import numpy as np
import pandas as pd
import pytest

from hal_core.questionnaire import Questionnaire
from hal_core.reward import (
    PAPER_HAL16_TRAIT_IDS,
    HLReward,
    MissingTraitError,
    RewardConfig,
    TraitLogisticRegression,
    fit_reward,
    paired_accuracy,
)
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
    np.testing.assert_array_equal(
        model.decision_function(data[traits]), model.decision_function(shuffled)
    )
    refit_on_reordered = TraitLogisticRegression().fit(shuffled, data["is_human"])
    np.testing.assert_array_equal(
        refit_on_reordered.decision_function(data[traits]),
        model.decision_function(data[traits]),
    )


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
    assert metrics["cv.accuracy.mean"] == pytest.approx(0.7747, abs=5e-4)
    assert metrics["cv_refit.accuracy"] == pytest.approx(0.7712, abs=5e-4)
    assert 0.72 < metrics["cv_grouped.accuracy"] < 0.82
    assert 0.80 < metrics["paired.accuracy"] < 0.92


def test_selection_and_weights_match_the_published_reward(gpt5_fit, data_dir):
    assert tuple(gpt5_fit.selected_trait_ids) == PAPER_HAL16_TRAIT_IDS
    published = HLReward.from_paper_weights(data_dir / "hal16_weights_paper.json")
    for trait_id, weight in published.weights.items():
        assert gpt5_fit.reward.weights[trait_id] == pytest.approx(weight, abs=1e-3)
    assert gpt5_fit.reward.bias == pytest.approx(published.bias, abs=1e-3)
