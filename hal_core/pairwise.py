"""Pairwise human evaluation: win rates and Elo from side-by-side judgements.

A judgement compares a left response (A) with a right response (B) on a five-point scale. As
in the paper, ``Certainly`` counts 1 / 0, ``Likely`` 0.75 / 0.25 and ``Tie`` 0.5 / 0.5. Elo
(K=32, start 1500) depends on the order of the games, so it is averaged over many random
orderings and reported with its spread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hal_core.tables import ROW_COLUMN, TableError, read_table

OUTCOME_SCORES: dict[str, float] = {
    "Certainly A": 1.0,
    "Likely A": 0.75,
    "Tie": 0.5,
    "Likely B": 0.25,
    "Certainly B": 0.0,
}
"""Score of the left model (A) for each label; the right model (B) gets one minus it."""

REQUIRED_COLUMNS = ("left_model", "right_model", "hl_score", "is_completed")
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f", ""}


@dataclass(frozen=True)
class PairwiseJudgements:
    """Completed judgements (``left``, ``right``, ``score`` of left) and what was left out."""

    games: pd.DataFrame
    n_incomplete: int
    source: str


@dataclass(frozen=True)
class PairwiseResult:
    """Per-model win rate and Elo (mean and std over orderings)."""

    table: pd.DataFrame
    n_games: int
    n_incomplete: int
    n_orderings: int
    seed: int


def _completed(value: object, source: str, row: int) -> bool:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return False
    if isinstance(value, int | float | np.integer | np.floating) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise TableError(f"{source} row {row}: is_completed is {value!r}, expected true/false")


def parse_judgements(frame: pd.DataFrame) -> PairwiseJudgements:
    """Validate a pairwise table and keep the completed judgements with their left score."""
    source = frame.attrs.get("source", "<pairwise table>")
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise TableError(f"{source}: missing columns {missing} (need {list(REQUIRED_COLUMNS)})")
    rows = frame[ROW_COLUMN] if ROW_COLUMN in frame.columns else pd.RangeIndex(1, len(frame) + 1)
    games, n_incomplete = [], 0
    for row, left, right, label, completed in zip(
        rows,
        frame["left_model"],
        frame["right_model"],
        frame["hl_score"],
        frame["is_completed"],
        strict=True,
    ):
        label_text = "" if pd.isna(label) else str(label).strip()
        if label_text and label_text not in OUTCOME_SCORES:
            raise TableError(
                f"{source} row {row}: hl_score {label!r} is not one of {list(OUTCOME_SCORES)}"
            )
        if not _completed(completed, source, int(row)):
            n_incomplete += 1
            continue
        if not label_text:
            raise TableError(f"{source} row {row}: completed judgement has no hl_score")
        if pd.isna(left) or pd.isna(right) or not str(left).strip() or not str(right).strip():
            raise TableError(f"{source} row {row}: left_model and right_model must be named")
        if str(left).strip() == str(right).strip():
            raise TableError(f"{source} row {row}: a model is compared with itself ({left!r})")
        games.append(
            {
                ROW_COLUMN: int(row),
                "left": str(left).strip(),
                "right": str(right).strip(),
                "score": OUTCOME_SCORES[label_text],
            }
        )
    table = pd.DataFrame(games, columns=[ROW_COLUMN, "left", "right", "score"])
    return PairwiseJudgements(games=table, n_incomplete=n_incomplete, source=source)


def read_judgements(path: str | Path) -> PairwiseJudgements:
    """Read and validate a pairwise judgement CSV."""
    return parse_judgements(read_table(path))


def win_rates(games: pd.DataFrame) -> pd.DataFrame:
    """Per model: games played and mean score (1 win, 0.75 likely win, 0.5 tie, ...)."""
    sides = pd.concat(
        [
            pd.DataFrame({"model": games["left"], "score": games["score"]}),
            pd.DataFrame({"model": games["right"], "score": 1.0 - games["score"]}),
        ],
        ignore_index=True,
    )
    grouped = sides.groupby("model")["score"]
    return pd.DataFrame({"games": grouped.size(), "win_rate": grouped.mean()})


def elo_ratings(
    games: pd.DataFrame,
    order: Sequence[int] | None = None,
    k: float = 32.0,
    start: float = 1500.0,
) -> dict[str, float]:
    """Sequential Elo over the games in ``order`` (row positions); soft scores allowed."""
    lefts = games["left"].to_numpy()
    rights = games["right"].to_numpy()
    scores = games["score"].to_numpy(dtype=float)
    ratings = {model: start for model in sorted({*lefts, *rights})}
    for index in range(len(games)) if order is None else order:
        left, right, score = lefts[index], rights[index], scores[index]
        expected = 1.0 / (1.0 + 10.0 ** ((ratings[right] - ratings[left]) / 400.0))
        ratings[left] += k * (score - expected)
        ratings[right] -= k * (score - expected)
    return ratings


def random_orderings(n_games: int, n_orderings: int, seed: int) -> list[np.ndarray]:
    """``n_orderings`` random permutations of the games, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(n_games) for _ in range(n_orderings)]


def elo_over_orderings(
    games: pd.DataFrame,
    orderings: Sequence[Sequence[int]],
    k: float = 32.0,
    start: float = 1500.0,
) -> pd.DataFrame:
    """Elo per model averaged over the given orderings, with its std (numpy default, ddof=0)."""
    runs = pd.DataFrame([elo_ratings(games, order, k, start) for order in orderings])
    return pd.DataFrame({"elo": runs.mean(axis=0), "elo_std": runs.std(axis=0, ddof=0)})


def evaluate_pairwise(
    judgements: PairwiseJudgements,
    n_orderings: int = 1000,
    seed: int = 42,
    k: float = 32.0,
    start: float = 1500.0,
) -> PairwiseResult:
    """Win rate and order-averaged Elo for every model in the judgements."""
    games = judgements.games
    if games.empty:
        raise TableError(f"{judgements.source}: no completed judgements")
    if n_orderings < 1:
        raise ValueError(f"n_orderings must be at least 1, got {n_orderings}")
    orderings = random_orderings(len(games), n_orderings, seed)
    table = win_rates(games).join(elo_over_orderings(games, orderings, k, start))
    table = table.sort_values("elo", ascending=False)
    table.index.name = "model"
    return PairwiseResult(
        table=table,
        n_games=len(games),
        n_incomplete=judgements.n_incomplete,
        n_orderings=n_orderings,
        seed=seed,
    )
