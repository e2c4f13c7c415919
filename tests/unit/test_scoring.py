"""One scoring path: ratings by trait id -> HL, bad ratings named by row and column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hal_core.reward import HLReward
from hal_core.scoring import (
    STATUSES,
    NothingScoredError,
    RatingValueError,
    hl_scores,
    require_scores,
)
from hal_core.tables import ROW_COLUMN

REWARD = HLReward(weights={"t02": 2.0, "t01": -1.0}, bias=0.5)


def ratings(rows: list[dict], source: str = "r.csv") -> pd.DataFrame:
    table = pd.DataFrame(rows)
    table.insert(0, ROW_COLUMN, np.arange(1, len(table) + 1))
    table.attrs["source"] = source
    return table


def test_scores_by_trait_id_whatever_the_column_order_or_dtype():
    by_id = hl_scores(ratings([{"t01": 1, "t02": 5}, {"t01": 3, "t02": 3}]), REWARD)
    reordered = hl_scores(ratings([{"t02": 5.0, "t01": 1.0}, {"t02": 3.0, "t01": 3.0}]), REWARD)
    assert by_id["hl"].tolist() == pytest.approx([2 * 5 - 1 + 0.5, 2 * 3 - 3 + 0.5])
    pd.testing.assert_frame_equal(by_id, reordered)


def test_unrated_rows_keep_their_reason_and_score_nan():
    table = ratings(
        [
            {"t01": 1, "t02": 5, "status": "rated", "error": None},
            {"t01": None, "t02": None, "status": "failed", "error": "timed out"},
        ]
    )
    scored = hl_scores(table, REWARD)
    assert scored["hl"].iloc[0] == pytest.approx(9.5)
    assert np.isnan(scored["hl"].iloc[1]) and scored["score_error"].iloc[1] == "timed out"
    assert pd.isna(scored["score_error"].iloc[0])


@pytest.mark.parametrize(
    ("value", "shown"), [(7, "7"), (-1, "-1"), (float("nan"), "nan"), ("abc", "'abc'")]
)
def test_a_rating_off_the_scale_names_file_row_column_and_rule(value, shown):
    table = ratings([{"t01": 1, "t02": 5}, {"t01": 2, "t02": value}])
    with pytest.raises(RatingValueError) as error:
        hl_scores(table, REWARD)
    assert str(error.value) == (
        f"r.csv row 2, column t02: {shown} is not a rating (rule: a number from 1 to 5)"
    )


def test_a_missing_trait_column_is_named():
    with pytest.raises(RatingValueError, match=r"no column for traits \['t02'\]"):
        hl_scores(ratings([{"t01": 1}]), REWARD)


@pytest.mark.parametrize(
    ("status", "shown"), [("Rated", "'Rated'"), ("ok", "'ok'"), (None, "a blank")]
)
def test_a_status_outside_the_rule_names_file_row_column_and_allowed_values(status, shown):
    table = ratings(
        [
            {"t01": 1, "t02": 5, "status": "rated"},
            {"t01": 2, "t02": 4, "status": status},
            {"t01": 3, "t02": 3, "status": status},
        ]
    )
    with pytest.raises(RatingValueError) as error:
        hl_scores(table, REWARD)
    allowed = ", ".join(repr(value) for value in STATUSES)
    assert str(error.value) == (
        f"r.csv row 2, column status: {shown} is not a status (and 1 more rows) "
        f"(rule: one of {allowed}; only 'rated' rows are scored)"
    )


def test_every_allowed_status_is_accepted_and_only_rated_rows_score():
    rows = [{"t01": 3, "t02": 3, "status": status} for status in STATUSES]
    scored = hl_scores(ratings(rows), REWARD)
    assert scored["hl"].notna().tolist() == [status == "rated" for status in STATUSES]
    require_scores(scored, "r.csv")  # one row scored: nothing to say


def test_a_table_of_only_unrated_rows_is_an_error_with_its_reasons():
    table = ratings(
        [
            {"t01": None, "t02": None, "status": "failed", "error": "timed out"},
            {"t01": None, "t02": None, "status": "failed", "error": "timed out"},
            {"t01": None, "t02": None, "status": "missing", "error": None},
        ]
    )
    scored = hl_scores(table, REWARD)
    assert scored["hl"].isna().all()
    with pytest.raises(NothingScoredError) as error:
        require_scores(scored, "r.csv")
    assert str(error.value) == (
        "r.csv: none of its 3 rows was scored (2 x 'timed out', 1 x 'not rated'; rule: a row "
        "is scored when its status is 'rated', or when there is no status column)"
    )


def test_an_empty_table_is_not_an_unscored_one():
    empty = ratings([{"t01": 1, "t02": 5, "status": "rated"}]).iloc[:0]
    require_scores(hl_scores(empty, REWARD), "r.csv")
