"""Reading the HAL tables: list cells, witness ratings keyed by trait id."""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from hal_core.questionnaire import Questionnaire

ROW_COLUMN = "_row"
"""1-based data row number in the source file (header excluded), carried for error messages."""


class TableError(ValueError):
    """A table that breaks a rule; the message names the file, row and rule."""


def parse_list_cell(cell: object) -> list | None:
    """A list cell written as a JSON array or a Python literal; None when it is not a list."""
    if isinstance(cell, list):
        return cell
    if not isinstance(cell, str):
        return None
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(cell)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        return value if isinstance(value, list) else None
    return None


def canonical_list_cell(cell: object) -> str | None:
    """The cell as canonical JSON when it parses to a list, else None (caught by contracts)."""
    value = parse_list_cell(cell)
    return None if value is None else json.dumps(value)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV with a 1-based row-number column for error messages."""
    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise TableError(f"{path}: cannot be read as CSV ({error})") from error
    frame.insert(0, ROW_COLUMN, np.arange(1, len(frame) + 1))
    frame.attrs["source"] = str(path)
    return frame


def _ratings_matrix(frame: pd.DataFrame, column: str, questionnaire: Questionnaire) -> np.ndarray:
    source = frame.attrs.get("source", "<table>")
    n_traits = len(questionnaire.traits)
    scale = questionnaire.scale
    rows = []
    for row_number, cell in zip(frame[ROW_COLUMN], frame[column], strict=True):
        values = parse_list_cell(cell)
        if values is None:
            raise TableError(f"{source} row {row_number}: {column} is not a list ({cell!r:.60})")
        if len(values) != n_traits:
            raise TableError(
                f"{source} row {row_number}: {column} has {len(values)} ratings, "
                f"questionnaire {questionnaire.name} has {n_traits} traits"
            )
        bad = [v for v in values if not (isinstance(v, int) and scale.min <= v <= scale.max)]
        if bad:
            raise TableError(
                f"{source} row {row_number}: {column} has ratings outside integers "
                f"{scale.min}-{scale.max}: {bad}"
            )
        rows.append(values)
    return np.asarray(rows, dtype=float).reshape(len(rows), n_traits)


def witness_ratings(frame: pd.DataFrame, questionnaire: Questionnaire) -> pd.DataFrame:
    """One row per witness of a Turing-test ratings table, one column per trait id.

    Rows are all A witnesses in file order, then all B witnesses: the order of the
    paper's published notebook, on which its row-wise KFold protocol depends.
    Positions in a stored list map to the questionnaire's traits in its file order.
    """
    parts = []
    for side in ("A", "B"):
        matrix = _ratings_matrix(frame, f"likert_evaluation_{side}", questionnaire)
        part = pd.DataFrame(matrix, columns=questionnaire.trait_ids)
        part.insert(0, "game_id", frame["game_id"].to_numpy())
        part.insert(1, "witness", side)
        part.insert(2, "is_human", (frame["who_is_human"] == side).astype(int).to_numpy())
        part.insert(3, ROW_COLUMN, frame[ROW_COLUMN].to_numpy())
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def ratings_by_position(
    frame: pd.DataFrame, column: str, questionnaire: Questionnaire
) -> pd.DataFrame:
    """Stored rating lists as one column per trait id (position i is the i-th trait)."""
    matrix = _ratings_matrix(frame, column, questionnaire)
    return pd.DataFrame(matrix, columns=questionnaire.trait_ids, index=frame.index)
