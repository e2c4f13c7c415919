import os
import stat

import pandas as pd
import pytest

from hal_core import tables
from hal_core.questionnaire import Questionnaire, Trait
from hal_core.tables import (
    TableError,
    is_id_column,
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


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        # the bad byte starts the second line of a quoted dialogue in data row 1
        (b'model,dialogue,game_id\ngpt,"Doctor: hi\n\xe9Patient: no",7\nllama,ok,8\n',
         "row 1, column 'dialogue', line 3"),
        (b'model,dialogue,game_id\ngpt,"Doctor: hi\r\n\xe9Patient",7\r\n',
         "row 1, column 'dialogue', line 3"),
        (b'model,dialogue,game_id\ngpt,"Doctor: hi\n\n\xe9",7\n',
         "row 1, column 'dialogue', line 4"),
        # the same byte where a record ends starts the next row's first field
        (b'model,dialogue,game_id\ngpt,"Doctor: hi\nbye",7\n\xe9llama,ok,8\n',
         "row 2, column 'model', line 4"),
        (b'model,dialogue,game_id\ngpt,"Doctor: hi",\xe9\n', "row 1, column 'game_id', line 2"),
    ],
)  # fmt: skip
def test_a_bad_byte_inside_a_multiline_field_names_the_row_and_column_that_hold_it(
    tmp_path, raw, where
):
    path = _write(tmp_path, "dialogues.csv", raw)
    with pytest.raises(TableError) as caught:
        read_table(path)
    assert str(caught.value).startswith(f"{path} {where}")
    offset = raw.index(b"\xe9")
    assert f"byte {offset}: bytes b'\\xe9' are not UTF-8" in str(caught.value)


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


def test_every_real_table_reads_exactly_as_pandas_reads_it_ids_included(data_dir):
    paths = sorted(data_dir.rglob("*.csv"))
    id_columns = set()
    for path in paths:
        table = read_table(path, min_rows=1)  # no id in the real data breaks the id rule
        pd.testing.assert_frame_equal(table.drop(columns="_row"), pd.read_csv(path))
        id_columns.update(filter(is_id_column, table.columns))
    assert len(paths) > 10
    assert {"game_id", "dialogue_id", "persona_id", "conversation_id"} <= id_columns


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


@pytest.mark.parametrize(
    "cell",
    ['=HYPERLINK("http://x")', "@SUM(A1)", "+1+2", "-2+3+cmd|' /C calc'!A0", "-abc",
     "\tTAB", "\rCR"],
)  # fmt: skip
def test_an_id_a_spreadsheet_would_run_is_refused_when_read_naming_file_row_and_column(
    tmp_path, cell
):
    frame = pd.DataFrame({"dialogue": ["a", "b", "c"], "persona_id": ["p1", cell, "p3"]})
    path = tmp_path / "prompts.csv"
    frame.to_csv(path, index=False, lineterminator="\r\n")  # CRLF quotes a cell's \r
    with pytest.raises(TableError) as caught:
        read_table(path)
    message = str(caught.value)
    assert message.startswith(f"{path} row 2, column 'persona_id': id {cell!r:.60} (rule: ")
    assert "ids are kept as given" in message
    assert "cannot start with = + - @, tab or CR" in message


def test_ids_reach_the_output_exactly_as_read_and_join_to_their_inputs(tmp_path):
    raw = (
        b"game_id,dialogue_id,item_id,reason\r\n"
        b"-3,d-1,p1-base-s0-0,=cmd\r\n"
        b"4,+4,-2.5,@me\r\n"
        b"17,  d 2,A+B,plain\r\n"
    )
    source = _write(tmp_path, "in.csv", raw)
    table = read_table(source)
    out = write_table(table.drop(columns="_row"), tmp_path / "out.csv")
    lines = out.read_bytes().splitlines()
    assert [line.split(b",")[:3] for line in lines] == [
        line.split(b",")[:3] for line in raw.splitlines()
    ]
    assert lines[1].endswith(b",'=cmd")  # text that is not an id is still neutralized
    back = read_table(out)
    for column in ("game_id", "dialogue_id", "item_id"):
        assert back[column].tolist() == table[column].tolist()
    joined = table.merge(back, on=["game_id", "dialogue_id", "item_id"], validate="1:1")
    assert len(joined) == len(table)


def test_an_unsafe_id_is_refused_when_written_not_changed(tmp_path):
    frame = pd.DataFrame({"pair_id": ["ok", "@x"], "note": ["=a", "b"]})
    with pytest.raises(TableError, match=r"out\.csv row 2, column 'pair_id': id '@x' \(rule: "):
        write_table(frame, tmp_path / "out.csv")
    assert list(tmp_path.iterdir()) == []
    raw = write_table(frame, tmp_path / "raw.csv", neutralize=False)  # for later stages only
    assert pd.read_csv(raw)["pair_id"].tolist() == ["ok", "@x"]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_tables_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        path = write_table(pd.DataFrame({"a": [1]}), tmp_path / "table.csv")
        rewritten = write_table(pd.DataFrame({"a": [2]}), path)  # replacing an old table
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert stat.S_IMODE(rewritten.stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_a_failed_write_leaves_the_old_table_and_no_temporary_file(tmp_path, monkeypatch):
    path = write_table(pd.DataFrame({"a": [1]}), tmp_path / "table.csv")

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tables, "table_text", disk_full)
    with pytest.raises(OSError, match="disk full"):
        write_table(pd.DataFrame({"a": [2]}), path)
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]
    assert pd.read_csv(path)["a"].tolist() == [1]
