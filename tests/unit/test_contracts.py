"""Corrupted copies of the real ratings table are caught with file, row and rule."""

import json

import pandas as pd
import pytest

from hal_core.tables import read_table
from tasks.validation import UNIQUE, check_contract
from tests.unit.test_validation_report import markdown_rows, read_offline_page


def _set(column, index, value):
    """A corruption that writes ``value(frame)`` into one cell (0-based index)."""

    def corrupt(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        frame.loc[index, column] = value(frame)
        return frame

    return corrupt


# name: (corruption, 1-based rows it breaks, expectation that must catch it)
CORRUPTIONS = {
    "rating of 7": (
        _set("likert_evaluation_A", 3, lambda f: "[7" + f.likert_evaluation_A[3][2:]),
        [4],
        "expect_column_values_to_match_json_schema",
    ),
    "31-item list": (
        _set("likert_evaluation_B", 10, lambda f: json.dumps([3] * 31)),
        [11],
        "expect_column_values_to_match_json_schema",
    ),
    "empty transcript": (
        _set("conversation_A_transcript", 20, lambda f: ""),
        [21],
        "expect_column_values_to_not_be_null",
    ),
    "duplicated game id": (
        _set("game_id", 30, lambda f: f.game_id[31]),
        [31, 32],
        "expect_column_values_to_be_unique",
    ),
    "non-list cell": (
        _set("likert_evaluation_A", 40, lambda f: "five"),
        [41],
        "expect_column_values_to_not_be_null",
    ),
    "label inconsistent with who_is_human": (
        _set("label_A", 50, lambda f: "gpt-4o" if f.label_A[50] == "Human" else "Human"),
        [51],
        "expect_column_values_to_be_in_set",
    ),
}


@pytest.fixture(scope="module")
def corrupted_file(data_dir, tmp_path_factory):
    frame = pd.read_csv(data_dir / "turing" / "ratings32_gpt-5.csv")
    for corrupt, _, _ in CORRUPTIONS.values():
        frame = corrupt(frame)
    path = tmp_path_factory.mktemp("corrupt") / "ratings32_corrupt.csv"
    frame.to_csv(path, index=False)
    return path


def test_real_ratings_pass_their_contract(data_dir, tmp_path):
    report = check_contract(
        read_table(data_dir / "turing" / "ratings32_gpt-5.csv"),
        "turing_ratings32",
        "fail",
        tmp_path,
    )
    assert report.success and report.error is None and len(report.valid) == 557
    page = read_offline_page(report.docs_path.read_text())
    assert "passed: 17 of 17 expectations met" in " ".join(page.text)
    assert len(markdown_rows(report.table_path.read_text())) == 17


def test_fail_policy_names_file_rows_and_rules(corrupted_file, tmp_path):
    report = check_contract(read_table(corrupted_file), "turing_ratings32", "fail", tmp_path)
    assert report.error is not None and len(report.valid) == 0
    assert "ratings32_corrupt.csv" in report.error
    for name, (_, rows, rule) in CORRUPTIONS.items():
        matching = [f for f in report.failures if f.expectation == rule]
        flagged = {row["_row"] for failure in matching for row in failure.rows}
        assert set(rows) <= flagged, name
        if rule != UNIQUE:
            for row in rows:
                assert f"row {row} " in report.error, name
    repeated = pd.read_csv(corrupted_file)["game_id"][31]
    assert (
        f"expect_column_values_to_be_unique on column 'game_id': game_id={repeated} at rows "
        "31, 32 (quarantine keeps the first occurrence of a repeated value, drops the later ones)"
    ) in report.error
    assert "()" not in report.error
    assert "expect_column_values_to_match_json_schema on column 'likert_evaluation_A__json'" in (
        report.error
    )


def test_quarantine_keeps_every_valid_row_and_the_first_of_repeated_ids(corrupted_file, tmp_path):
    report = check_contract(read_table(corrupted_file), "turing_ratings32", "quarantine", tmp_path)
    bad_rows = {row for _, rows, _ in CORRUPTIONS.values() for row in rows} - {31}
    assert set(report.quarantined["_row"]) == bad_rows
    assert len(report.valid) == 557 - len(bad_rows)
    assert set(report.valid["_row"]).isdisjoint(bad_rows)
    assert 31 in set(report.valid["_row"])  # game id of rows 31 and 32: the first stays
    quarantined = pd.read_csv(report.quarantine_path).set_index("_row")
    assert quarantined["_failed_rules"].str.contains("expect_").all()
    assert quarantined.loc[32, "_failed_rules"] == (
        f"expect_column_values_to_be_unique(game_id): game_id={quarantined.loc[32, 'game_id']} "
        "is first at row 31, which is kept"
    )
    assert report.error is None


def test_a_header_only_table_breaks_the_row_count_rule_under_either_policy(data_dir, tmp_path):
    path = tmp_path / "ratings_header_only.csv"
    path.write_text(
        pd.read_csv(data_dir / "turing" / "ratings32_gpt-5.csv").head(0).to_csv(index=False)
    )
    for policy in ("fail", "quarantine"):
        report = check_contract(read_table(path), "turing_ratings32", policy, tmp_path / policy)
        assert len(report.valid) == 0
        assert report.error == (
            f"{path}: data contract turing_ratings32 failed:\n"
            "  - expect_table_row_count_to_be_between on table: observed 0 (min_value=1)"
        )
    allowed = check_contract(read_table(path), "turing_ratings32", "fail", tmp_path, min_rows=0)
    assert allowed.success and allowed.error is None  # a caller may accept an empty table


def test_quarantine_that_leaves_too_few_rows_is_an_error(data_dir, tmp_path):
    frame = pd.read_csv(data_dir / "turing" / "ratings32_gpt-5.csv").head(2)
    frame["likert_evaluation_A"] = "five"
    path = tmp_path / "ratings_all_bad.csv"
    frame.to_csv(path, index=False)
    report = check_contract(read_table(path), "turing_ratings32", "quarantine", tmp_path)
    assert len(report.quarantined) == 2 and len(report.valid) == 0
    assert report.error.endswith("quarantine left 0 of 2 rows valid; the contract needs at least 1")


def test_a_table_that_passed_is_not_checked_again_but_a_changed_one_is(data_dir, tmp_path):
    from tasks.validation import PASSED_MARKER

    table = read_table(data_dir / "turing" / "ratings32_gpt-5.csv")
    first = check_contract(table, "turing_ratings32", "fail", tmp_path)
    assert first.success and (tmp_path / PASSED_MARKER).is_file()
    stamp = first.result_path.stat().st_mtime_ns
    again = check_contract(table.copy(), "turing_ratings32", "fail", tmp_path)
    assert again.success and len(again.valid) == len(first.valid)
    assert again.result_path.stat().st_mtime_ns == stamp  # no new GX run
    broken = table.copy()
    broken.loc[3, "who_is_human"] = "C"
    changed = check_contract(broken, "turing_ratings32", "fail", tmp_path)
    assert not changed.success and changed.error and not (tmp_path / PASSED_MARKER).exists()
