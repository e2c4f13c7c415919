"""Stability selection: game-level bootstraps, deterministic for a seed, stable across judges."""

import numpy as np
import pandas as pd
import pytest

from hal_core.questionnaire import Questionnaire
from hal_core.reward import TraitLogisticRegression
from hal_core.stability import (
    StabilityConfig,
    bootstrap_games,
    bootstrap_weights,
    reward_weight_intervals,
    selection_probability,
    stability_table,
    stable_set,
    weight_intervals,
)
from hal_core.tables import read_table, witness_ratings


def _judge(seed: int, strong: str) -> pd.DataFrame:
    """200 games; ``strong`` separates human from AI, t02 helps a little, t03/t04 are noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for game in range(200):
        for is_human in (1, 0):
            ratings = {t: float(rng.integers(1, 6)) for t in ("t01", "t02", "t03", "t04")}
            ratings[strong] = float(np.clip(ratings[strong] + (2 if is_human else -2), 1, 5))
            rows.append({"game_id": 1000 + game, "is_human": is_human, **ratings})
    return pd.DataFrame(rows)


def test_bootstraps_draw_whole_games_with_replacement():
    draws = bootstrap_games([5, 5, 3, 3, 9, 9, 7, 7], n_bootstraps=50, seed=1)
    assert len(draws) == 50
    for counts in draws:
        assert list(counts.index) == [3, 5, 7, 9] and counts.sum() == 4
    assert any((counts == 0).any() for counts in draws)  # some games left out ...
    assert any((counts > 1).any() for counts in draws)  # ... others drawn twice
    again = bootstrap_games([9, 9, 7, 7, 5, 5, 3, 3], n_bootstraps=50, seed=1)
    assert all(a.equals(b) for a, b in zip(draws, again, strict=True))  # order of rows is moot


def test_informative_traits_are_selected_in_every_bootstrap():
    config = StabilityConfig(n_bootstraps=20, seed=3)
    probability = selection_probability(_judge(0, "t01"), ["t04", "t03", "t02", "t01"], config)
    assert list(probability.index) == ["t01", "t02", "t03", "t04"]
    assert probability["t01"] == 1.0
    assert probability["t03"] < 0.5 and probability["t04"] < 0.5


def test_stable_set_needs_the_threshold_under_every_judge():
    table = pd.DataFrame(
        {"gpt-5": [1.0, 0.9, 0.5, 0.7], "gpt-5-mini": [0.95, 0.2, 0.9, 0.7]},
        index=["t01", "t02", "t03", "t04"],
    )
    assert stable_set(table, 0.7) == ["t01", "t04"]
    assert stable_set(table, 0.9) == ["t01"]


@pytest.fixture(scope="module")
def recorded_judges(data_dir):
    questionnaire = Questionnaire.load(data_dir / "questionnaires" / "hal32q.json")
    judges = {
        judge: witness_ratings(
            read_table(data_dir / f"turing/ratings32_{judge}.csv"), questionnaire
        )
        for judge in ("gpt-5", "gpt-5-mini")
    }
    return judges, questionnaire.trait_ids


def test_stability_table_is_deterministic_for_a_seed(recorded_judges):
    judges, trait_ids = recorded_judges
    config = StabilityConfig(n_bootstraps=8, seed=11)
    first = stability_table(judges, trait_ids, config)
    again = stability_table({k: judges[k] for k in reversed(list(judges))}, trait_ids[::-1], config)
    pd.testing.assert_frame_equal(first, again[first.columns])
    assert list(first.columns) == ["gpt-5", "gpt-5-mini"] and list(first.index) == trait_ids
    other = stability_table(judges, trait_ids, StabilityConfig(n_bootstraps=8, seed=12))
    assert not first.equals(other)
    # the traits every fit on GPT-5's ratings keeps (t03 lowercase, t05, t20) stay in
    assert (first.loc[["t03", "t05", "t20"]] >= 0.75).all().all()
    assert set(stable_set(first, 0.75)) >= {"t03", "t05", "t20"}


def test_default_stability_is_a_hundred_bootstraps():
    assert StabilityConfig().n_bootstraps >= 100


def test_selection_probability_is_the_share_of_bootstraps_keeping_the_weight():
    config = StabilityConfig(n_bootstraps=15, seed=4)
    witnesses = _judge(1, "t02")
    draws = bootstrap_weights(witnesses, ["t04", "t01", "t02", "t03"], 15, 4, config.C)
    assert list(draws.columns) == ["t01", "t02", "t03", "t04"] and len(draws) == 15
    probability = selection_probability(witnesses, ["t01", "t02", "t03", "t04"], config)
    expected = (draws.abs() > config.selection_threshold).mean()
    np.testing.assert_allclose(probability.to_numpy(), expected.to_numpy(), rtol=0, atol=1e-12)
    assert len(set(draws["t02"].round(6))) > 1  # the bootstraps fit different games


def test_weight_intervals_are_ordered_and_shrink_with_more_games():
    few = weight_intervals(_judge(2, "t01").query("game_id < 1040"), ["t01", "t03"], 40, 0, 1.0)
    many = weight_intervals(_judge(2, "t01"), ["t03", "t01"], 40, 0, 1.0)
    assert list(many.index) == ["t01", "t03"]
    assert ((many.ci_low <= many.ci_high) & (few.ci_low <= few.ci_high)).all()
    width = lambda table: table.ci_high - table.ci_low  # noqa: E731
    assert (width(many) < width(few)).all()
    assert many.loc["t01", "ci_low"] > 0.5  # the separating trait's interval excludes 0
    with pytest.raises(ValueError, match="confidence"):
        weight_intervals(_judge(2, "t01"), ["t01"], 5, 0, 1.0, confidence=95)


def test_bootstrap_intervals_cover_the_full_data_weights_of_the_reward(recorded_judges):
    judges, trait_ids = recorded_judges
    witnesses = judges["gpt-5"]
    model = TraitLogisticRegression().fit(witnesses[trait_ids], witnesses["is_human"])
    table = reward_weight_intervals(
        witnesses, trait_ids[::-1], model.selected_trait_ids_, n_bootstraps=30, seed=0, C=1.0
    )
    assert list(table.index) == trait_ids
    # the point estimates are the reward's own fits, not a bootstrap mean
    np.testing.assert_allclose(table.full_weight, model.full_coef_[trait_ids], atol=1e-9)
    selected = table.loc[model.selected_trait_ids_]
    np.testing.assert_allclose(selected.selected_weight, model.coef_, atol=1e-9)
    assert table.drop(index=model.selected_trait_ids_).selected_weight.isna().all()
    for prefix in ("full", "selected"):
        rows = table if prefix == "full" else selected
        weight, low, high = (rows[f"{prefix}_{c}"] for c in ("weight", "ci_low", "ci_high"))
        assert ((low <= weight + 1e-12) & (weight <= high + 1e-12)).all(), prefix
        assert (high - low > 0.01).all()  # a real spread, not a copy of the point estimate
    # the traits every fit keeps (t01 brief replies, t05 emojis) are away from 0
    assert (table.loc[["t01", "t05"], "full_ci_low"] > 0.3).all()
