"""Markdown for the reports that MLflow and Prefect show: tables, rounded numbers, fenced
text. MLflow's artifact view and Prefect's markdown artifacts render GitHub-flavoured markdown;
indented plain text comes out as one paragraph."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence


def number(value: float | None, spec: str = ".3f") -> str:
    """``value`` formatted by ``spec``; ``n/a`` for None, NaN or an infinity."""
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    return format(float(value), spec)


def metric_value(value: float | None) -> str:
    """A metric as a reader wants it: whole numbers without decimals, others to 4 significant
    digits (never the 17 digits of a float's repr)."""
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.4g}"


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A GitHub-flavoured table: the header row, the separator row, one line per row."""
    lines = ["| " + " | ".join(_cell(c) for c in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a table row has {len(row)} cells, its header {len(header)}")
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return lines


def frame_table(frame) -> str:
    """A pandas frame as a GitHub-flavoured table (its columns as the header)."""
    rows = [list(row) for row in frame.itertuples(index=False)]
    return "\n".join(table([str(c) for c in frame.columns], rows)) + "\n"


def fenced(text: str) -> list[str]:
    """``text`` in a code fence longer than any fence it holds."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}text", text, fence]
