"""HL scores of rated dialogues: the one path from a ratings table to scores.

A ratings table has one column per trait id (a judge's ``ratings_table``, a file a user
wrote, recorded ratings expanded by position). Rows a judge did not rate (``status``
``failed`` or ``missing``) score NaN and keep their reason; any other status, and any rated
value that is not a number on the Likert scale, is an error naming the row, the column and
the rule. A table none of whose rows could be scored is an error too (:func:`require_scores`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pandas as pd

from hal_core.tables import ROW_COLUMN

HL_COLUMN, SCORE_ERROR_COLUMN = "hl", "score_error"
ID_COLUMN, STATUS_COLUMN, KIND_COLUMN, ERROR_COLUMN = "item_id", "status", "error_kind", "error"
"""The columns of a ratings table besides one per trait id (``ratings_table`` writes them)."""
RATED_STATUS, FAILED_STATUS, MISSING_STATUS = "rated", "failed", "missing"
"""The ``status`` of a row the judge rated (the only rows scored), failed on, or has no rating
for."""
UNRATED_STATUSES = (FAILED_STATUS, MISSING_STATUS)
"""The ``status`` of a row without ratings: the judge failed on it (``ratings_table`` writes
``failed``), or no rating was found for it (``missing``, the alignment stage's candidates)."""
STATUSES = (RATED_STATUS, *UNRATED_STATUSES)
NOT_RATED = "not rated"
"""The ``score_error`` of an unrated row that gave no reason."""


class Reward(Protocol):
    """What scoring needs of a reward: its trait ids and a score per row of ratings."""

    @property
    def trait_ids(self) -> list[str]: ...

    def score(self, ratings: pd.DataFrame) -> np.ndarray: ...


class RatingValueError(ValueError):
    """A rating that is not a number on the scale, or a status that is none of
    :data:`STATUSES`; the message names row, column and rule."""


class NothingScoredError(ValueError):
    """A non-empty table none of whose rows could be scored; the message says why."""


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


def checked_statuses(table: pd.DataFrame) -> pd.Series:
    """Whether each row is rated (by its ``status``; a table without one is all rated), or an
    error naming the first row whose status is none of :data:`STATUSES`."""
    if STATUS_COLUMN not in table.columns:
        return pd.Series(True, index=table.index)
    status = table[STATUS_COLUMN]
    known = status.isin(STATUSES)
    if not known.all():
        unknown = table.index[~known.to_numpy()]
        cell = status.at[unknown[0]]
        shown = "a blank" if pd.isna(cell) else repr(str(cell))
        others = f" (and {len(unknown) - 1} more rows)" if len(unknown) > 1 else ""
        allowed = ", ".join(repr(value) for value in STATUSES)
        raise RatingValueError(
            f"{table.attrs.get('source', '<ratings>')} {_row_name(table, unknown[0])}, column "
            f"{STATUS_COLUMN}: {shown} is not a status{others} (rule: one of {allowed}; only "
            f"{RATED_STATUS!r} rows are scored)"
        )
    return status.eq(RATED_STATUS)


def hl_scores(table: pd.DataFrame, reward: Reward, scale: tuple[int, int] = (1, 5)) -> pd.DataFrame:
    """``hl`` and ``score_error`` for every row of ``table``, on its index."""
    rated = checked_statuses(table)
    scores = pd.DataFrame(
        {HL_COLUMN: np.nan, SCORE_ERROR_COLUMN: pd.Series(None, index=table.index, dtype=object)},
        index=table.index,
    )
    if (~rated).any():
        reasons = (
            table.loc[~rated, ERROR_COLUMN].fillna(NOT_RATED).astype(str)
            if ERROR_COLUMN in table.columns
            else NOT_RATED
        )
        scores.loc[~rated, SCORE_ERROR_COLUMN] = reasons
    if rated.any():
        values = checked_ratings(table.loc[rated], list(reward.trait_ids), scale)
        values.attrs = table.attrs
        scores.loc[rated, HL_COLUMN] = reward.score(values)
    return scores


def require_scores(scores: pd.DataFrame, source: str) -> None:
    """Raise :class:`NothingScoredError` when ``scores`` (of :func:`hl_scores`) has rows but
    no HL score, with its rows' most common reasons: a request that scores nothing says so."""
    if scores.empty or scores[HL_COLUMN].notna().any():
        return
    reasons = scores[SCORE_ERROR_COLUMN].fillna(NOT_RATED).astype(str).value_counts()
    shown = ", ".join(
        f"{count} x {_shortened(reason)!r}" for reason, count in reasons.head(3).items()
    )
    more = f" and {len(reasons) - 3} other reasons" if len(reasons) > 3 else ""
    raise NothingScoredError(
        f"{source}: none of its {len(scores)} rows was scored ({shown}{more}; rule: a row is "
        f"scored when its {STATUS_COLUMN} is {RATED_STATUS!r}, or when there is no "
        f"{STATUS_COLUMN} column)"
    )


def _shortened(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
