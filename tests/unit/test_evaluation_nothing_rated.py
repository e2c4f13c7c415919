"""An evaluation whose judge rated nothing stops, naming the files and why each row went unrated
(issue 24, row 4: it used to end in a bare ``KeyError: 'model'``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hal_core.evaluation import (
    JudgedRatings,
    combine_generated,
    rated_rows,
    read_generated,
    require_ratings,
)
from hal_core.tables import TableError
from tests.fakes.generated import PERSONAS, SYMPTOMS, casual, formal, generated_table

TRAITS = ["t01", "t02"]
NO_PATIENT = "no turn of the rated speaker (P) in the dialogue"


def write_tables(folder: Path, base_texts: list[str], trained_texts: list[str], **flags):
    """Base and epoch-1 tables of the same personas, read back as the evaluate flow reads them."""
    paths = []
    for epoch, texts in ((0, base_texts), (1, trained_texts)):
        rows = list(zip(PERSONAS, texts, strict=False))
        table = generated_table(epoch, rows, degenerate=flags.get(f"degenerate_{epoch}"))
        path = folder / f"generated-e{epoch}.csv"
        table.to_csv(path, index=False)
        paths.append(path)
    return paths, combine_generated([read_generated(path) for path in paths])


def judged(responses: pd.DataFrame, failed: dict[int, tuple[str, str]]) -> JudgedRatings:
    """Ratings of the rows a judge is sent: 3s, NaN (with a failure) at ``failed`` positions."""
    rows = rated_rows(responses)
    ratings = pd.DataFrame(3.0, index=rows, columns=TRAITS)
    failures = []
    for position, (error, kind) in failed.items():
        index = rows[position]
        ratings.loc[index] = np.nan
        failures.append({"index": index, "item_id": str(index), "error": error, "error_kind": kind})
    return JudgedRatings(ratings, failures, pd.Series(None, index=rows, dtype=object))


def test_empty_dialogues_all_failing_stop_with_the_files_rows_and_reasons(tmp_path: Path) -> None:
    paths, responses = write_tables(tmp_path, ["", ""], ["", ""])
    failed = {k: (NO_PATIENT, "input") for k in range(4)}
    with pytest.raises(TableError) as caught:
        require_ratings(responses, judged(responses, failed), base_epoch=0)
    message = str(caught.value)
    assert message.startswith(f"{paths[0]}, {paths[1]}: nothing could be rated by the judge")
    assert "0 of 4 dialogues got ratings" in message
    assert "rule: an evaluation needs at least one rated dialogue" in message
    assert f"4 failed (input): {NO_PATIENT}" in message
    assert f"{paths[0]} rows [1, 2]" in message and f"{paths[1]} rows [1, 2]" in message


def test_every_row_flagged_degenerate_is_nothing_rated_and_says_which_flags(tmp_path: Path) -> None:
    every = {0: "empty", 1: "empty", 2: "too_short"}
    texts = ["", "", "P: ok"]
    paths, responses = write_tables(tmp_path, texts, texts, degenerate_0=every, degenerate_1=every)
    assert rated_rows(responses).empty  # nothing is even sent to the judge
    with pytest.raises(TableError, match="nothing could be rated by the second judge") as caught:
        require_ratings(responses, judged(responses, {}), 0, "the second judge")
    message = str(caught.value)
    assert "4 flagged degenerate 'empty' by the generator, not sent to the judge" in message
    assert "2 flagged degenerate 'too_short'" in message and f"{paths[1]} rows [3]" in message


def test_reasons_are_counted_per_error_with_the_commonest_first(tmp_path: Path) -> None:
    _, responses = write_tables(tmp_path, ["", "", ""], ["", "", ""])
    failed = {k: (NO_PATIENT, "input") for k in range(4)}
    failed |= {4: ("HTTP 503", "transient"), 5: ("HTTP 503", "transient")}
    with pytest.raises(TableError) as caught:
        require_ratings(responses, judged(responses, failed), 0)
    message = str(caught.value)
    assert message.index("4 failed (input)") < message.index("2 failed (transient): HTTP 503")
    assert "rows [1, 2, 3]" in message  # the first three of a file, then how many more


def test_an_unrated_base_epoch_stops_naming_the_base_file(tmp_path: Path) -> None:
    base = ["", "", ""]
    trained = [casual(s) for s in SYMPTOMS[:3]]
    paths, responses = write_tables(tmp_path, base, trained)
    failed = {k: (NO_PATIENT, "input") for k in range(3)}
    with pytest.raises(TableError) as caught:
        require_ratings(responses, judged(responses, failed), 0)
    message = str(caught.value)
    assert message.startswith(f"{paths[0]}: nothing of tiny-base's base epoch 0 could be rated")
    assert "0 of 3 dialogues got ratings" in message and str(paths[1]) not in message


def test_one_rated_dialogue_per_epoch_is_enough(tmp_path: Path) -> None:
    texts = [formal(SYMPTOMS[0]), ""]
    _, responses = write_tables(tmp_path, texts, texts)
    failed = {1: (NO_PATIENT, "input"), 3: (NO_PATIENT, "input")}
    require_ratings(responses, judged(responses, failed), 0)  # no error
