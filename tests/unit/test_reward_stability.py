"""Stability selection: game-level bootstraps, deterministic for a seed, stable across judges."""

import numpy as np
import pandas as pd
import pytest

from hal_core.questionnaire import Questionnaire
from hal_core.stability import (
    StabilityConfig,
    bootstrap_games,
    selection_probability,
    stability_table,
    stable_set,
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
