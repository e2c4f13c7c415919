"""A validation result as people read it: a self-contained HTML page (inline CSS, no script,
in-page links only, so it opens offline inside MLflow's artifact view) and a markdown table of
every expectation."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html import escape

from hal_core.tables import ROW_COLUMN

ROWS_SHOWN = 20
"""Unexpected rows a report shows per failed expectation (the result JSON holds them all)."""

_HIDDEN_KWARGS = ("batch_id", "column", "column_A", "column_B")


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation of a validation result as a report line: what it checked, what GX saw."""

    table: str
    expectation: str
    column: str | None
    kwargs: dict
    success: bool
    observed: str
    unexpected_rows: list[dict] = field(default_factory=list)


def _compact(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _observed(item: dict) -> str:
    details = item.get("result") or {}
    if (item.get("exception_info") or {}).get("raised_exception"):
        return f"error: {item['exception_info'].get('exception_message')}"
    if "observed_value" in details:
        return f"observed {_compact(details['observed_value'])}"
    if "unexpected_count" not in details:
        return ""
    text = f"{details['unexpected_count']} of {details.get('element_count')} unexpected"
    rows = [
        row[ROW_COLUMN] for row in details.get("unexpected_index_list") or [] if ROW_COLUMN in row
    ]
    if rows:
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        text += f" (rows {', '.join(map(str, rows[:5]))}{more})"
    return text


def expectation_outcomes(result: dict, table: str) -> list[ExpectationOutcome]:
    """Every expectation of a checkpoint result (GX's ``describe_dict``), in suite order."""
    outcomes = []
    for validation in result.get("validation_results", []):
        for item in validation["expectations"]:
            kwargs = item.get("kwargs") or {}
            columns = [str(kwargs[k]) for k in ("column", "column_A", "column_B") if k in kwargs]
            details = item.get("result") or {}
            rows = details.get("unexpected_index_list") or details.get("partial_unexpected_list")
            outcomes.append(
                ExpectationOutcome(
                    table=table,
                    expectation=item["expectation_type"],
                    column=", ".join(columns) or None,
                    kwargs={k: v for k, v in kwargs.items() if k not in _HIDDEN_KWARGS},
                    success=bool(item["success"]),
                    observed=_observed(item),
                    unexpected_rows=[
                        row if isinstance(row, dict) else {"value": row}
                        for row in (rows or [])[:ROWS_SHOWN]
                    ],
                )
            )
    return outcomes


def _verdict(outcomes: list[ExpectationOutcome]) -> str:
    met = sum(outcome.success for outcome in outcomes)
    word = "passed" if met == len(outcomes) else "FAILED"
    return f"{word}: {met} of {len(outcomes)} expectations met"


def _md_cell(value: object, code: bool = False) -> str:
    text = str(value).replace("\r", " ").replace("\n", " ").replace("|", r"\|")
    if code and text:
        return f"`` {text} ``" if "`" in text else f"`{text}`"
    return text


MARKDOWN_COLUMNS = ("table", "expectation", "column", "kwargs", "success", "observed")


def expectations_markdown(outcomes: list[ExpectationOutcome], title: str) -> str:
    """A markdown table of every expectation and its result (one row each, failures in bold)."""
    lines = [
        f"# {title}",
        "",
        _verdict(outcomes),
        "",
        "| " + " | ".join(MARKDOWN_COLUMNS) + " |",
        "|" + "---|" * len(MARKDOWN_COLUMNS),
    ]
    for outcome in outcomes:
        cells = [
            _md_cell(outcome.table),
            _md_cell(outcome.expectation, code=True),
            _md_cell(outcome.column or ""),
            _md_cell(_compact(outcome.kwargs) if outcome.kwargs else "", code=True),
            "yes" if outcome.success else "**no**",
            _md_cell(outcome.observed),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em;
  color: #1f2328; }
h1 { font-size: 1.4em; margin: 0 0 .4em; }
.verdict { font-weight: 600; padding: .4em .7em; border-radius: 4px; display: inline-block; }
.verdict.ok { background: #dafbe1; color: #116329; }
.verdict.bad { background: #ffebe9; color: #a40e26; }
dl { display: grid; grid-template-columns: max-content auto; gap: .15em 1em; }
dt { font-weight: 600; } dd { margin: 0; word-break: break-all; }
table { border-collapse: collapse; width: 100%; margin-top: 1em; }
th, td { border: 1px solid #d0d7de; padding: .3em .5em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
tr.bad td { background: #fff5f5; } td.ok { color: #116329; } td.bad { color: #a40e26;
  font-weight: 600; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; word-break: break-all; }
table table { margin: .4em 0 0; font-size: 12px; }
nav a { margin-right: 1em; }
"""
"""Inline, like everything the page needs: MLflow shows an HTML artifact from a blob: URL,
where GX's own Data Docs lose their CDN scripts and styles and their links between pages."""


def _rows_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    head = "".join(f"<th>{escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(_compact(row.get(c)))}</td>" for c in columns) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _html_row(number: int, outcome: ExpectationOutcome) -> str:
    state = "ok" if outcome.success else "bad"
    observed = escape(outcome.observed)
    if outcome.unexpected_rows:
        observed += (
            f"<details><summary>{len(outcome.unexpected_rows)} shown</summary>"
            f"{_rows_table(outcome.unexpected_rows)}</details>"
        )
    kwargs = escape(_compact(outcome.kwargs)) if outcome.kwargs else ""
    return (
        f'<tr id="expectation-{number}" class="{state}"><td>{number}</td>'
        f"<td><code>{escape(outcome.expectation)}</code></td>"
        f"<td>{escape(outcome.column or '')}</td><td><code>{kwargs}</code></td>"
        f'<td class="{state}">{"yes" if outcome.success else "no"}</td><td>{observed}</td></tr>'
    )


def validation_html(outcomes: list[ExpectationOutcome], title: str, facts: dict[str, str]) -> str:
    """A one-file, offline report of a validation result: styles inline, no script, no URL but
    the page's own ``#`` anchors (failed expectations link to their rows)."""
    passed = all(outcome.success for outcome in outcomes)
    failed = [
        f'<a href="#expectation-{number}">{escape(o.expectation)} ({escape(o.column or "table")})'
        "</a>"
        for number, o in enumerate(outcomes, 1)
        if not o.success
    ]
    nav = f"<nav><strong>Failed:</strong> {''.join(failed)}</nav>" if failed else ""
    facts_html = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts.items())
    header = "".join(
        f"<th>{name}</th>"
        for name in ("#", "expectation", "column", "kwargs", "success", "observed")
    )
    rows = "".join(_html_row(number, o) for number, o in enumerate(outcomes, 1))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>\n"
        f'<body id="top"><h1>{escape(title)}</h1>'
        f'<p class="verdict {"ok" if passed else "bad"}">{escape(_verdict(outcomes))}</p>'
        f"<dl>{facts_html}</dl>{nav}<table><tr>{header}</tr>{rows}</table>"
        '<p><a href="#top">Back to top</a></p></body></html>\n'
    )
