"""A contract check's evidence opens offline: one self-contained HTML page and a markdown table
of every expectation, both readable without GX, a network or a second file."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest

from hal_core.tables import read_table
from hal_core.validation_report import (
    MARKDOWN_COLUMNS,
    expectation_outcomes,
    expectations_markdown,
    validation_html,
)
from tasks.contracts import PATIENT_LINES, get_contract
from tasks.validation import UNIQUE, check_contract


class _Page(HTMLParser):
    """Every tag with its attributes, every id, the CSS and the visible text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.css: list[str] = []
        self.text: list[str] = []
        self._open: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._open.append(tag)

    def handle_endtag(self, tag):
        while self._open and self._open.pop() != tag:
            pass

    def handle_data(self, data):
        inside = self._open[-1] if self._open else None
        if inside == "style":
            self.css.append(data)
        elif inside not in ("script", "title") and data.strip():
            self.text.append(data.strip())


def read_offline_page(html: str) -> _Page:
    """The parsed page, after checking that it needs nothing but itself: no script, no
    external reference in any tag, CSS inline, and every link an anchor of this page."""
    page = _Page()
    page.feed(html)
    page.close()
    assert "http://" not in html and "https://" not in html
    assert not [tag for tag, _ in page.tags if tag in ("script", "iframe", "img", "link")]
    ids = {attrs["id"] for _, attrs in page.tags if attrs.get("id")}
    for tag, attrs in page.tags:
        for name in ("src", "href", "srcset", "action", "data"):
            if name in attrs:
                target = attrs[name] or ""
                assert target.startswith("#") and target[1:] in ids, (tag, name, target)
    assert "border-collapse" in "".join(page.css)  # the styles travel inside the page
    return page


def markdown_rows(text: str) -> list[dict[str, str]]:
    """The rows of the markdown table of expectations, by column name."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split(" | ")]
    assert tuple(header) == MARKDOWN_COLUMNS and set(lines[1]) == {"|", "-"}
    rows = []
    for line in lines[2:]:
        cells = [cell.strip() for cell in line[2:-2].split(" | ")]
        assert len(cells) == len(header), line  # a pipe inside a cell is escaped
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


@pytest.fixture(scope="module")
def repeated_id(data_dir, tmp_path_factory):
    """20 real games where row 6 repeats the game id of row 5: only the uniqueness rule fails."""
    frame = read_table(data_dir / "turing" / "games.csv").head(20).copy()
    frame.loc[5, "game_id"] = frame.loc[4, "game_id"]
    output = tmp_path_factory.mktemp("validation")
    report = check_contract(frame, "turing_games", "quarantine", output, table="turing/games")
    return report, frame


def test_the_page_needs_no_network_and_shows_every_expectation_and_its_result(repeated_id):
    report, frame = repeated_id
    assert report.docs_path.parent == report.result_path.parent
    assert not (report.result_path.parent / "data_docs").exists()  # GX's site is not built
    page = read_offline_page(report.docs_path.read_text())
    text = " ".join(page.text)
    assert "FAILED: 10 of 11 expectations met" in text
    for expectation in get_contract("turing_games").suite_expectations():
        assert expectation.expectation_type in text
    rows = {
        attrs["id"]: attrs["class"] for tag, attrs in page.tags if tag == "tr" and "id" in attrs
    }
    assert len(rows) == 11 and list(rows.values()).count("bad") == 1
    assert ("a", {"href": "#expectation-3"}) in page.tags  # the failure links to its row
    assert "2 of 20 unexpected (rows 5, 6)" in text
    assert str(frame.loc[4, "game_id"]) in page.text  # the repeated id, in the rows shown


def test_the_markdown_table_lists_every_expectation_with_its_success(repeated_id):
    report, _ = repeated_id
    assert report.table_path.parent == report.result_path.parent
    rows = markdown_rows(report.table_path.read_text())
    suite = get_contract("turing_games").suite_expectations()
    assert [row["expectation"].strip("`") for row in rows] == [e.expectation_type for e in suite]
    assert {row["table"] for row in rows} == {"turing/games"}
    failed = [row for row in rows if row["success"] != "yes"]
    assert failed == [
        {
            "table": "turing/games",
            "expectation": f"`{UNIQUE}`",
            "column": "game_id",
            "kwargs": "",
            "success": "**no**",
            "observed": "2 of 20 unexpected (rows 5, 6)",
        }
    ]
    assert rows[0]["observed"] == "observed 20" and rows[0]["kwargs"] == '`{"min_value": 1}`'
    assert [o.expectation for o in report.outcomes] == [r["expectation"][1:-1] for r in rows]


def test_the_reports_come_back_when_a_passed_table_lacks_them(data_dir, tmp_path):
    frame = read_table(data_dir / "turing" / "games.csv").head(20)
    first = check_contract(frame, "turing_games", "fail", tmp_path)
    assert first.success and len(first.outcomes) == 11
    stamp = first.result_path.stat().st_mtime_ns
    again = check_contract(frame, "turing_games", "fail", tmp_path)
    assert again.result_path.stat().st_mtime_ns == stamp  # passed before: no new GX run
    assert again.outcomes == first.outcomes  # read back from the result JSON
    first.docs_path.unlink()  # evidence written before the page existed
    rebuilt = check_contract(frame, "turing_games", "fail", tmp_path)
    assert rebuilt.success and rebuilt.docs_path.is_file()
    assert "passed: 11 of 11 expectations met" in " ".join(
        read_offline_page(rebuilt.docs_path.read_text()).text
    )


def _result(*expectations: dict) -> dict:
    """A checkpoint result in the shape of GX's ``describe_dict``."""
    return {"success": False, "validation_results": [{"expectations": list(expectations)}]}


def test_cells_with_pipes_markup_and_errors_keep_both_reports_intact():
    result = _result(
        {
            "expectation_type": "expect_column_values_to_match_regex",
            "success": False,
            "kwargs": {"batch_id": "b", "column": "dialogue", "regex": PATIENT_LINES},
            "result": {
                "element_count": 3,
                "unexpected_count": 1,
                "unexpected_index_list": [{"_row": 2, "dialogue": "</td><script>x</script>"}],
            },
        },
        {
            "expectation_type": "expect_column_values_to_not_be_null",
            "success": False,
            "kwargs": {"batch_id": "b", "column": "absent"},
            "result": {},
            "exception_info": {"raised_exception": True, "exception_message": "no column <absent>"},
        },
    )
    outcomes = expectation_outcomes(json.loads(json.dumps(result)), "candidates")
    rows = markdown_rows(expectations_markdown(outcomes, "t"))
    assert [row["success"] for row in rows] == ["**no**", "**no**"]
    assert rows[0]["kwargs"].startswith('`{"regex": "(?im)') and "\\|" in rows[0]["kwargs"]
    assert rows[1]["observed"] == "error: no column <absent>"
    page = read_offline_page(validation_html(outcomes, "t", {"source": "x.csv"}))
    assert "error: no column <absent>" in page.text  # escaped: shown, not parsed as a tag
    assert '"</td><script>x</script>"' in page.text
