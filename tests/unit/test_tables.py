import pandas as pd
import pytest

from hal_core import tables
from hal_core.questionnaire import Questionnaire, Trait
from hal_core.tables import (
    TableError,
    parse_list_cell,
    read_table,
    table_text,
    witness_ratings,
    write_table,
)

QUESTIONNAIRE = Questionnaire(
    name="q3", traits=tuple(Trait(id=f"t{i:02d}", text=f"s{i}") for i in (1, 2, 3))
)


@pytest.mark.parametrize(
    ("cell", "expected"),
    [("[1, 2]", [1, 2]), ("[1,2,]", [1, 2]), ("['a', 'b']", ["a", "b"]), ('["a"]', ["a"]),
     ("{}", None), ("oops", None), (float("nan"), None), ("5", None)],
)  # fmt: skip
def test_parse_list_cell(cell, expected):
    assert parse_list_cell(cell) == expected


def _games(tmp_path, a_cells, b_cells):
    frame = pd.DataFrame(
        {
            "game_id": range(10, 10 + len(a_cells)),
            "who_is_human": ["A", "B"][: len(a_cells)],
            "likert_evaluation_A": a_cells,
            "likert_evaluation_B": b_cells,
        }
    )
    path = tmp_path / "ratings.csv"
    frame.to_csv(path, index=False)
    return read_table(path)


def test_witness_table_lists_all_a_then_all_b_keyed_by_trait_id(tmp_path):
    table = _games(tmp_path, ["[1,2,3]", "[4,5,1]"], ["[2,2,2]", "[3,3,3]"])
    witnesses = witness_ratings(table, QUESTIONNAIRE)
    assert witnesses["witness"].tolist() == ["A", "A", "B", "B"]
    assert witnesses["is_human"].tolist() == [1, 0, 0, 1]
    assert witnesses["t02"].tolist() == [2, 5, 2, 3]


@pytest.mark.parametrize(
    ("cell", "rule"),
    [("[1,2]", "has 2 ratings"), ("[1,2,9]", "outside integers 1-5"), ("nope", "not a list")],
)
def test_bad_rating_cells_name_file_row_and_rule(tmp_path, cell, rule):
    table = _games(tmp_path, ["[1,2,3]", cell], ["[2,2,2]", "[3,3,3]"])
    with pytest.raises(TableError, match=rf"ratings.csv row 2: likert_evaluation_A .*{rule}"):
        witness_ratings(table, QUESTIONNAIRE)


def _write(tmp_path, name: str, raw: bytes):
    path = tmp_path / name
    path.write_bytes(raw)
    return path


def test_bytes_that_are_not_utf8_are_named_by_file_row_column_line_and_byte(tmp_path):
    latin1 = 'game_id,reason\n1,fine\n2,"caf\xe9\nau lait"\n'.encode("latin-1")
    path = _write(tmp_path, "latin1.csv", latin1)
    with pytest.raises(TableError) as caught:
        read_table(path)
    message = str(caught.value)
    assert message.startswith(f"{path} row 2, column 'reason', line 3, byte 28: ")
    assert "b'\\xe9' are not UTF-8 (rule: tables are UTF-8 text" in message
    header = _write(tmp_path, "header.csv", "id,r\xe9ason\n1,x\n".encode("latin-1"))
    with pytest.raises(TableError, match=r"header\.csv header, line 1, byte 4: "):
        read_table(header)


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    path = _write(tmp_path, "bom.csv", b"\xef\xbb\xbfgame_id,reason\n1,caf\xc3\xa9\n")
    table = read_table(path)
    assert list(table.columns) == ["_row", "game_id", "reason"]
    assert table["reason"].tolist() == ["café"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"game_id;reason;score\n1;a;3\n2;b;4\n", r"header: one column 'game_id;reason;score' "
         r"that holds 2 ';': the file looks ';'-delimited \(rule: columns are separated by ','\)"),
        (b"a\tb\n1\t2\n", r"header: .* the file looks tab-delimited"),
        (b"id;note, why;score, x\n1;a, b;3, 1\n2;c, d, e;4, 2\n3;x;1\n",
         r": row 2 \(line 3\) has 4 fields, the header 3; row 3 \(line 4\) has 1 field, the "
         r"header 3 \(rule: every row has as many fields as the header\); the file looks "
         r"';'-delimited"),
    ],
)  # fmt: skip
def test_a_file_delimited_by_something_else_says_so(tmp_path, raw, expected):
    path = _write(tmp_path, "table.csv", raw)
    with pytest.raises(TableError, match=rf"table\.csv {expected}|table\.csv{expected}"):
        read_table(path)


def test_ragged_rows_name_their_row_line_and_field_counts(tmp_path):
    raw = b'a,b,c\n1,"two\nlines",3\n4,5\n6,7,8,9\n' + b"1,2,3\n" * 3 + b"1,2\n" * 6
    path = _write(tmp_path, "ragged.csv", raw)
    with pytest.raises(TableError) as caught:
        read_table(path)
    message = str(caught.value)
    assert "row 2 (line 4) has 2 fields, the header 3; row 3 (line 5) has 4 fields" in message
    assert "and 3 more rows (rule: every row has as many fields as the header)" in message
    assert "delimited" not in message  # no other delimiter fits better


def test_a_header_only_file_fails_only_where_rows_are_required(tmp_path):
    path = _write(tmp_path, "header_only.csv", b"game_id,likert_evaluation_A\n")
    assert read_table(path).empty
    with pytest.raises(TableError, match=r"header_only\.csv: 0 data rows .*at least 1 data row"):
        read_table(path, min_rows=1)
    with pytest.raises(TableError, match=r"empty\.csv: the file is empty"):
        read_table(_write(tmp_path, "empty.csv", b"\n"))


def test_unreadable_files_raise_the_os_error_a_retry_may_fix(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_table(tmp_path / "missing.csv")


def test_the_real_tables_read_exactly_as_pandas_reads_them(data_dir):
    for name in ("turing/statements_gpt-5.csv", "synthlabs/candidates_test.csv"):
        table = read_table(data_dir / name, min_rows=1)
        pd.testing.assert_frame_equal(table.drop(columns="_row"), pd.read_csv(data_dir / name))


def test_written_tables_neutralize_formula_cells_and_keep_numbers(tmp_path):
    frame = pd.DataFrame(
        {
            "text": ["=cmd|' /C calc'!A0", "+1+2", "-2+3+cmd|' /C calc'!A0", "@SUM(A1)",
                     "\tTAB", "\rCR", "-3.5", "- a bullet", "plain", None],
            "score": [-1.5, 2.0, -3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, -10.0],
            "=HYPERLINK(\"x\")": range(10),
        }
    )  # fmt: skip
    path = write_table(frame, tmp_path / "out" / "table.csv")
    assert [p.name for p in path.parent.iterdir()] == ["table.csv"]  # no temporary file left
    back = pd.read_csv(path, keep_default_na=False)
    assert back["text"].tolist() == [
        "'=cmd|' /C calc'!A0", "'+1+2", "'-2+3+cmd|' /C calc'!A0", "'@SUM(A1)",
        "'\tTAB", "'\rCR", "-3.5", "'- a bullet", "plain", "",
    ]  # fmt: skip
    assert back["score"].tolist() == frame["score"].tolist()  # negative numbers untouched
    assert list(back.columns)[2] == '\'=HYPERLINK("x")'
    assert table_text(frame) == path.read_bytes().decode("utf-8")
    assert frame["text"][0].startswith("=")  # the caller's frame is not changed
    exact = pd.read_csv(write_table(frame, tmp_path / "exact.csv", neutralize=False))
    assert exact["text"].tolist()[:6] == frame["text"].tolist()[:6]  # \r survives, quoted


def test_a_failed_write_leaves_the_old_table_and_no_temporary_file(tmp_path, monkeypatch):
    path = write_table(pd.DataFrame({"a": [1]}), tmp_path / "table.csv")

    def disk_full(*args):
        raise OSError("disk full")

    monkeypatch.setattr(tables, "table_text", disk_full)
    with pytest.raises(OSError, match="disk full"):
        write_table(pd.DataFrame({"a": [2]}), path)
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]
    assert pd.read_csv(path)["a"].tolist() == [1]
