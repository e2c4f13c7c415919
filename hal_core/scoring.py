"""HL scores of rated dialogues: the one path from a ratings table to scores.

A ratings table has one column per trait id (a judge's ``ratings_table``, a file a user
wrote, recorded ratings expanded by position). Rows a judge did not rate (``status`` other
than ``rated``) score NaN and keep their reason; every rated value must be a number on the
Likert scale, or the error names the row, the column and the rule.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pandas as pd

from hal_core.tables import ROW_COLUMN

HL_COLUMN, SCORE_ERROR_COLUMN = "hl", "score_error"
STATUS_COLUMN, ERROR_COLUMN = "status", "error"


class Reward(Protocol):
    """What scoring needs of a reward: its trait ids and a score per row of ratings."""

    @property
    def trait_ids(self) -> list[str]: ...

    def score(self, ratings: pd.DataFrame) -> np.ndarray: ...


class RatingValueError(ValueError):
    """A rating that is not a number on the scale; the message names row, column and rule."""


def _row_name(table: pd.DataFrame, index: object) -> str:
    if ROW_COLUMN in table.columns:
        return f"row {table.at[index, ROW_COLUMN]}"
    return f"row {index}"


def checked_ratings(
    table: pd.DataFrame, trait_ids: list[str], scale: tuple[int, int] = (1, 5)
) -> pd.DataFrame:
    """The trait columns as floats, or an error naming the first bad cell."""
    source = table.attrs.get("source", "<ratings>")
    missing = [trait_id for trait_id in trait_ids if trait_id not in table.columns]
    if missing:
        raise RatingValueError(
            f"{source}: no column for traits {missing} that the reward weighs "
            f"(columns are trait ids; found {[c for c in table.columns if c != ROW_COLUMN]})"
        )
    low, high = scale
    values = table[trait_ids].apply(pd.to_numeric, errors="coerce").astype(float)
    bad = ~np.isfinite(values.to_numpy()) | (values.to_numpy() < low) | (values.to_numpy() > high)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        index, trait_id = table.index[row], trait_ids[column]
        cell = table.at[index, trait_id]
        shown = repr(cell) if isinstance(cell, str) else str(cell)
        raise RatingValueError(
            f"{source} {_row_name(table, index)}, column {trait_id}: {shown} is not a rating "
            f"(rule: a number from {low} to {high})"
        )
    return values


def hl_scores(table: pd.DataFrame, reward: Reward, scale: tuple[int, int] = (1, 5)) -> pd.DataFrame:
    """``hl`` and ``score_error`` for every row of ``table``, on its index."""
    rated = (
        table[STATUS_COLUMN].astype(str).eq("rated")
        if STATUS_COLUMN in table.columns
        else pd.Series(True, index=table.index)
    )
    scores = pd.DataFrame(
        {HL_COLUMN: np.nan, SCORE_ERROR_COLUMN: pd.Series(None, index=table.index, dtype=object)},
        index=table.index,
    )
    if (~rated).any():
        reasons = (
            table.loc[~rated, ERROR_COLUMN].fillna("not rated").astype(str)
            if ERROR_COLUMN in table.columns
            else "not rated"
        )
        scores.loc[~rated, SCORE_ERROR_COLUMN] = reasons
    if rated.any():
        values = checked_ratings(table.loc[rated], list(reward.trait_ids), scale)
        values.attrs = table.attrs
        scores.loc[rated, HL_COLUMN] = reward.score(values)
    return scores
