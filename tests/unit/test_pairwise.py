"""Pairwise human evaluation: hand-computed win rates and Elo on a small made-up file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hal_core.pairwise import (
    elo_over_orderings,
    elo_ratings,
    evaluate_pairwise,
    random_orderings,
    read_judgements,
)
from hal_core.tables import TableError

ROWS = [
    # left, right, label, completed
    ("A", "B", "Certainly A", True),  # A 1, B 0
    ("B", "C", "Likely A", True),  # B 0.75, C 0.25
    ("C", "A", "Tie", True),  # C 0.5, A 0.5
    ("A", "C", "Likely B", False),  # not completed: left out
    ("A", "B", None, False),  # not completed, no label yet
]


def write_pairs(folder: Path, rows=ROWS) -> Path:
    path = folder / "pairs.csv"
    pd.DataFrame(rows, columns=["left_model", "right_model", "hl_score", "is_completed"]).to_csv(
        path, index=False
    )
    return path


def test_win_rates_match_hand_computed_values(tmp_path: Path) -> None:
    result = evaluate_pairwise(read_judgements(write_pairs(tmp_path)), n_orderings=10, seed=0)
    table = result.table
    assert result.n_games == 3 and result.n_incomplete == 2
    assert table.loc["A", "win_rate"] == pytest.approx((1 + 0.5) / 2)
    assert table.loc["B", "win_rate"] == pytest.approx((0 + 0.75) / 2)
    assert table.loc["C", "win_rate"] == pytest.approx((0.25 + 0.5) / 2)
    assert table["games"].to_dict() == {"A": 2, "B": 2, "C": 2}


def test_elo_of_one_ordering_matches_hand_computation(tmp_path: Path) -> None:
    games = read_judgements(write_pairs(tmp_path)).games
    # Order 2,1,0. C-A tie at equal ratings: no change. B beats C 0.75 at equal ratings:
    # B += 32 * (0.75 - 0.5) = 8. A (1500) beats B (1508) with E = 1 / (1 + 10^(8/400)):
    # A += 32 * (1 - E) = 16.36835.
    backwards = elo_ratings(games, order=[2, 1, 0])
    assert backwards["C"] == pytest.approx(1492.0)
    assert backwards["B"] == pytest.approx(1508.0 - 16.3683485, abs=1e-6)
    assert backwards["A"] == pytest.approx(1516.3683485, abs=1e-6)
    # Order 0,1,2: A beats B at equal ratings (+16), then B (1484) beats C (1500) 0.75 with
    # E_B = 1 / (1 + 10^(16/400)) = 0.476991, then C (1491.2637) ties A (1516).
    forwards = elo_ratings(games, order=[0, 1, 2])
    assert forwards["A"] == pytest.approx(1514.8627719, abs=1e-6)
    assert forwards["B"] == pytest.approx(1492.7363068, abs=1e-6)
    assert forwards["C"] == pytest.approx(1492.4009213, abs=1e-6)
    # Elo is zero-sum.
    assert sum(forwards.values()) == pytest.approx(3 * 1500)


def test_elo_is_averaged_over_orderings_with_its_spread(tmp_path: Path) -> None:
    games = read_judgements(write_pairs(tmp_path)).games
    table = elo_over_orderings(games, [[0, 1, 2], [2, 1, 0]])
    assert table.loc["A", "elo"] == pytest.approx((1514.8627719 + 1516.3683485) / 2, abs=1e-6)
    assert table.loc["A", "elo_std"] == pytest.approx((1516.3683485 - 1514.8627719) / 2, abs=1e-6)
    assert table.loc["C", "elo_std"] == pytest.approx((1492.4009213 - 1492.0) / 2, abs=1e-6)


def test_single_game_elo_does_not_depend_on_order(tmp_path: Path) -> None:
    path = write_pairs(tmp_path, [("m1", "m2", "Certainly B", True)])
    table = evaluate_pairwise(read_judgements(path), n_orderings=25, seed=3).table
    assert table.loc["m2", "elo"] == pytest.approx(1516.0)
    assert table.loc["m1", "elo"] == pytest.approx(1484.0)
    assert table["elo_std"].tolist() == [0.0, 0.0]


def test_fixed_seed_gives_deterministic_elo(tmp_path: Path) -> None:
    judgements = read_judgements(write_pairs(tmp_path))
    first = evaluate_pairwise(judgements, n_orderings=50, seed=7).table
    second = evaluate_pairwise(judgements, n_orderings=50, seed=7).table
    pd.testing.assert_frame_equal(first, second)
    assert [o.tolist() for o in random_orderings(3, 4, 7)] == [
        o.tolist() for o in random_orderings(3, 4, 7)
    ]
    other = evaluate_pairwise(judgements, n_orderings=50, seed=8).table
    assert not np.allclose(first["elo"], other.loc[first.index, "elo"])


def test_unknown_label_is_an_error_naming_the_row(tmp_path: Path) -> None:
    rows = [*ROWS[:2], ("C", "A", "Probably A", True)]
    with pytest.raises(TableError, match=r"pairs\.csv row 3: hl_score 'Probably A'"):
        read_judgements(write_pairs(tmp_path, rows))


def test_completed_row_without_label_and_self_comparison_are_errors(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="row 2: completed judgement has no hl_score"):
        read_judgements(write_pairs(tmp_path, [ROWS[0], ("A", "B", None, True)]))
    with pytest.raises(TableError, match="row 1: a model is compared with itself"):
        read_judgements(write_pairs(tmp_path, [("A", "A", "Tie", True)]))
    with pytest.raises(TableError, match="missing columns"):
        path = tmp_path / "bad.csv"
        pd.DataFrame({"left_model": ["A"]}).to_csv(path, index=False)
        read_judgements(path)
