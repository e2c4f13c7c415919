import pandas as pd
import pytest

from hal_core.questionnaire import Questionnaire, Trait
from hal_core.tables import TableError, parse_list_cell, read_table, witness_ratings

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
