"""Reading and writing the HAL tables: list cells, witness ratings keyed by trait id.

:func:`read_table` is the one CSV reader: UTF-8, comma-delimited, every row as wide as the
header, ids a spreadsheet cannot run as formulas, or a :class:`TableError` that names the
file, row, line and rule. :func:`write_table` is the one CSV writer: atomic, and safe to open
in a spreadsheet, with ids written as given so that outputs join to their inputs.
"""

from __future__ import annotations

import ast
import codecs
import contextlib
import csv
import hashlib
import io
import itertools
import json
import os
import re
import secrets
from collections.abc import Iterator
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


DELIMITER = ","
OTHER_DELIMITERS = {";": "';'", "\t": "tab", "|": "'|'"}
"""Delimiters a table is sometimes saved with by mistake, and how a message names them."""

RULE_UTF8 = "tables are UTF-8 text"
RULE_DELIMITER = "columns are separated by ','"
RULE_WIDTH = "every row has as many fields as the header"
RULE_QUOTING = "CSV quoting"
RULE_MIN_ROWS = "at least {n} data row(s)"
RULE_ID = (
    "ids are kept as given, so outputs join to their inputs: an id cannot start with "
    "= + - @, tab or CR (what a spreadsheet runs as a formula) unless it is a number"
)


@contextlib.contextmanager
def _field_size_limit(size: int) -> Iterator[None]:
    """Let the csv module read fields up to ``size`` characters (its default is 131,072)."""
    previous = csv.field_size_limit()
    csv.field_size_limit(max(previous, size))
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _records(text: str, delimiter: str = DELIMITER) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of every non-blank CSV record, as the csv module splits them."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    line = 1
    with _field_size_limit(len(text) + 1):
        for record in reader:
            start, line = line, reader.line_num + 1
            if record:
                yield start, record


def _decode(raw: bytes, path: Path) -> str:
    """The bytes as text (a UTF-8 byte-order mark is dropped), or where they are not UTF-8."""
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    body = raw[bom:]
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as error:
        offset = error.start
        line = body.count(b"\n", 0, offset) + 1
        where = f"line {line}, byte {bom + offset}"
        before = body[:offset].decode("utf-8")
        # A letter put where the bad bytes start lands in the field that holds them, even
        # inside a quoted field that spans lines; at a record's end it starts a new record.
        records = [fields for _, fields in _records(before + "x")]
        row, field = len(records) - 1, len(records[-1]) - 1
        if row == 0:
            where = f"header, {where}"
        else:
            header = records[0]
            column = header[field] if field < len(header) else f"field {field + 1}"
            where = f"row {row}, column {column!r}, {where}"
        bad = body[offset : max(error.end, offset + 1)]
        raise TableError(
            f"{path} {where}: bytes {bad!r} are not UTF-8 (rule: {RULE_UTF8}; save the file "
            "as UTF-8)"
        ) from None


def guess_delimiter(text: str) -> str | None:
    """Another delimiter that splits the first 50 records evenly into several fields, where
    ',' splits them unevenly or into fewer fields; None when ',' fits as well."""
    try:
        comma = {len(f) for _, f in itertools.islice(_records(text), 50)}
        for delimiter in OTHER_DELIMITERS:
            widths = {len(f) for _, f in itertools.islice(_records(text, delimiter), 50)}
            width = widths.pop() if len(widths) == 1 else 0
            if width > 1 and (len(comma) > 1 or width > max(comma, default=1)):
                return delimiter
    except csv.Error:
        return None
    return None


def _fields(n: int) -> str:
    return f"{n} field{'s' if n != 1 else ''}"


def _delimiter_hint(text: str) -> str:
    delimiter = guess_delimiter(text)
    if delimiter is None:
        return ""
    name = OTHER_DELIMITERS[delimiter]
    return f"; the file looks {name}-delimited: save it with ',' between columns"


def _check_shape(text: str, path: Path) -> None:
    """The header splits on ',' and every record has the header's number of fields."""
    header: list[str] | None = None
    ragged: list[str] = []
    n_ragged = row = 0
    line = 1
    try:
        for line, fields in _records(text):
            if header is None:
                header = fields
                found = [d for d in OTHER_DELIMITERS if d in header[0]]
                if len(header) == 1 and found:
                    delimiter = guess_delimiter(text) or found[0]
                    name = OTHER_DELIMITERS[delimiter]
                    raise TableError(
                        f"{path} header: one column {header[0][:60]!r} that holds "
                        f"{header[0].count(delimiter)} {name}: the file looks {name}-delimited "
                        f"(rule: {RULE_DELIMITER})"
                    )
                continue
            row += 1
            if len(fields) != len(header):
                n_ragged += 1
                if len(ragged) < 5:
                    ragged.append(
                        f"row {row} (line {line}) has {_fields(len(fields))}, the header "
                        f"{len(header)}"
                    )
    except csv.Error as error:
        raise TableError(
            f"{path} after row {row} (line {line}): {error} (rule: {RULE_QUOTING})"
        ) from None
    if ragged:
        more = f" and {n_ragged - len(ragged)} more rows" if n_ragged > len(ragged) else ""
        raise TableError(
            f"{path}: {'; '.join(ragged)}{more} (rule: {RULE_WIDTH}){_delimiter_hint(text)}"
        )


def read_table(path: str | Path, min_rows: int = 0) -> pd.DataFrame:
    """A CSV with a 1-based row-number column (``_row``) for error messages.

    Raises :class:`TableError` naming the file, row, line and rule when the bytes are not
    UTF-8, the file looks delimited by ';' or tab, a row is wider or narrower than the
    header, it has fewer than ``min_rows`` data rows, or an id would run as a spreadsheet
    formula (:func:`check_ids`). A file that cannot be opened raises
    the ``OSError`` (only that is worth a retry).
    """
    path = Path(path)
    text = _decode(path.read_bytes(), path)
    if not text.strip():
        raise TableError(f"{path}: the file is empty (rule: a CSV starts with a header row)")
    _check_shape(text, path)
    try:
        frame = pd.read_csv(io.StringIO(text))
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise TableError(f"{path}: cannot be read as CSV ({error})") from error
    if len(frame) < min_rows:
        raise TableError(
            f"{path}: {len(frame)} data rows under the header "
            f"(rule: {RULE_MIN_ROWS.format(n=min_rows)})"
        )
    frame.insert(0, ROW_COLUMN, np.arange(1, len(frame) + 1))
    frame.attrs["source"] = str(path)
    check_ids(frame, str(path))
    return frame


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet read a cell as a formula (OWASP CSV injection)."""

_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def neutralize_cell(value: object) -> object:
    """Text that a spreadsheet would run as a formula, with a leading ``'``; anything else,
    numbers and text that is just a number ("-3.5") included, unchanged."""
    if (
        isinstance(value, str)
        and value.startswith(FORMULA_START)
        and not _PLAIN_NUMBER.fullmatch(value)
    ):
        return "'" + value
    return value


def is_id_column(name: object) -> bool:
    """Whether a column holds ids (``game_id``, ``dialogue_id``, ``persona_id``, ``item_id``...):
    its name is ``id`` or ends with ``_id``."""
    return isinstance(name, str) and (name == "id" or name.endswith("_id"))


def check_ids(frame: pd.DataFrame, where: str) -> None:
    """Raise :class:`TableError` for id cells that a spreadsheet would run as a formula.

    An id is never neutralized (a leading ``'`` would stop outputs joining to their inputs),
    so one that :func:`neutralize_cell` would change is refused. Rows are numbered from 1
    under the header, as ``_row`` numbers them.
    """
    bad = []
    for column in filter(is_id_column, frame.columns):
        if pd.api.types.is_numeric_dtype(frame[column]):
            continue  # numbers are written as numbers, "-3" included
        for position, cell in enumerate(frame[column], start=1):
            if isinstance(cell, str) and neutralize_cell(cell) != cell:
                bad.append(f"row {position}, column {column!r}: id {cell!r:.60}")
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise TableError(f"{where} {'; '.join(bad[:5])}{more} (rule: {RULE_ID})")


def neutralize_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy whose text cells and column names cannot run as spreadsheet formulas."""
    safe = frame.copy()
    for column in safe.columns:
        series = safe[column]
        if pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series):
            safe[column] = series.map(neutralize_cell).astype(series.dtype, copy=False)
    safe.columns = [neutralize_cell(name) for name in safe.columns]
    return safe


def table_text(frame: pd.DataFrame, neutralize: bool = True, where: str = "<table>") -> str:
    """CSV text of a table without index; formula cells neutralized unless told otherwise,
    ids never (:func:`check_ids` refuses one that would need it; ``where`` names the table).

    Records end with CRLF (RFC 4180): the csv writer quotes a field that holds any character
    of the line terminator, so a bare CR inside a cell cannot split its row on reading.
    """
    if neutralize:
        check_ids(frame, where)
    safe = neutralize_formulas(frame) if neutralize else frame
    return safe.to_csv(index=False, lineterminator="\r\n")


def write_table(frame: pd.DataFrame, path: str | Path, neutralize: bool = True) -> Path:
    """Write a table as CSV, atomically (a temporary file renamed: a reader never sees half a
    table), with formula cells neutralized (:func:`neutralize_cell`) for people who open it
    in a spreadsheet, and ids as given (:func:`check_ids`). ``neutralize=False`` for a table
    only later stages read back, where a cell must keep its exact text (a dialogue that starts
    with "-")."""
    return atomic_write_text(path, table_text(frame, neutralize, where=str(path)))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text atomically (a temporary file renamed: a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    # os.open rather than tempfile.mkstemp, whose file is 0600 whatever the umask: the file
    # gets the mode any new file gets (0644 under umask 022). O_EXCL never reuses a file.
    handle = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
        os.replace(scratch, path)
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise
    return path


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
