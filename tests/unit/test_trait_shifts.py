"""Trait shifts with confidence intervals: paired by persona, keyed by trait id, and their
labels wrapped at spaces."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from hal_core import markdown
from hal_core.trait_shifts import at_epochs, trait_label, trait_shift_intervals


def scored() -> pd.DataFrame:
    """Four personas; persona p0 has two samples at the base; p3 is only rated at epoch 1."""
    rows = [
        ("p0", 0, 2.0, 4.0), ("p0", 0, 4.0, 4.0), ("p1", 0, 2.0, 3.0), ("p2", 0, 1.0, 5.0),
        ("p0", 1, 4.0, 4.0), ("p1", 1, 3.0, 2.0), ("p2", 1, 3.0, 5.0), ("p3", 1, 5.0, 1.0),
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["prompt_id", "epoch", "t01", "t02"])
    frame.insert(0, "model", "m")
    frame["hl"] = 0.0
    return frame


def test_a_shift_is_the_mean_paired_difference_over_personas_rated_at_both_epochs() -> None:
    table = trait_shift_intervals(scored(), ["t01", "t02"], base_epoch=0, confidence=0.95)
    assert set(table["epoch"]) == {1}  # the base is what a shift is measured from
    t01 = table.set_index("trait_id").loc["t01"]
    differences = np.array([4.0 - 3.0, 3.0 - 2.0, 3.0 - 1.0])  # p0's base is its mean, 3
    low, high = stats.t.interval(
        0.95, len(differences) - 1, loc=differences.mean(), scale=stats.sem(differences)
    )
    assert t01["n_pairs"] == 3  # p3 has no base to pair with
    assert t01["shift"] == pytest.approx(differences.mean(), abs=1e-12)
    assert (t01["ci_low"], t01["ci_high"]) == pytest.approx((low, high), abs=1e-9)
    assert t01["ci_low"] < t01["shift"] < t01["ci_high"]


def test_shifts_are_keyed_by_trait_id_whatever_the_order_asked() -> None:
    forward = trait_shift_intervals(scored(), ["t01", "t02"]).set_index("trait_id")
    backward = trait_shift_intervals(scored(), ["t02", "t01"]).set_index("trait_id")
    columns = ["shift", "ci_low", "ci_high"]
    np.testing.assert_allclose(
        forward.loc[["t01", "t02"], columns], backward.loc[["t01", "t02"], columns], atol=1e-12
    )
    assert forward.loc["t02", "shift"] == pytest.approx(-1 / 3, abs=1e-12)


def test_one_pair_has_a_shift_but_no_interval() -> None:
    frame = scored()
    frame = frame[frame["prompt_id"] == "p1"]
    row = trait_shift_intervals(frame, ["t01"]).iloc[0]
    assert row["n_pairs"] == 1 and row["shift"] == pytest.approx(1.0, abs=1e-12)
    assert np.isnan(row["ci_low"]) and np.isnan(row["ci_high"])


def test_a_model_without_its_base_epoch_is_an_error() -> None:
    frame = scored()
    with pytest.raises(ValueError, match="no base epoch 0"):
        trait_shift_intervals(frame[frame["epoch"] == 1], ["t01"])


def test_at_epochs_keeps_each_models_reported_epoch() -> None:
    table = pd.concat(
        [trait_shift_intervals(scored(), ["t01"]).assign(epoch=e) for e in (1, 2)],
        ignore_index=True,
    )
    assert list(at_epochs(table, {"m": 2})["epoch"]) == [2]
    assert at_epochs(table, {"other": 1}).empty


def test_labels_wrap_at_spaces_and_never_cut_a_word() -> None:
    text = "Uses  informal, colloquial language with contractions and interjections throughout."
    label = trait_label("t07", text, width=24)
    lines = label.split("\n")
    assert len(lines) > 2 and all(len(line) <= 24 for line in lines)
    assert " ".join(lines) == "t07: " + " ".join(text.split())  # every word whole, in order
    long_word = trait_label("t01", "Supercalifragilisticexpialidocious speech", width=10)
    assert long_word.split("\n") == ["t01:", "Supercalifragilisticexpialidocious", "speech"]
    assert trait_label("t02", "") == "t02"


def test_markdown_tables_have_a_separator_row_and_escape_pipes() -> None:
    lines = markdown.table(["a", "b"], [["x|y", 1]])
    assert lines == ["| a | b |", "|---|---|", "| x\\|y | 1 |"]
    with pytest.raises(ValueError, match="2 cells"):
        markdown.table(["a"], [["x", "y"]])
    assert markdown.metric_value(0.1 + 0.2) == "0.3" and markdown.metric_value(12.0) == "12"
    assert markdown.number(float("nan")) == "n/a" and markdown.number(None) == "n/a"
    assert markdown.fenced("a ```b```")[0] == "````text"
