"""The evaluation plots: integer epoch ticks, a trait-shift forest plot whose bars are the CIs
of hal_core.trait_shifts, and trait labels wrapped whole, never cut mid-word."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hal_core.evaluation import evaluate_scores
from hal_core.questionnaire import Questionnaire, Trait
from hal_core.trait_shifts import trait_label, trait_shift_intervals

QUESTIONNAIRE = Questionnaire(
    name="long statements",
    traits=(
        Trait(id="t01", text="Uses informal, colloquial language with contractions, slang and "
              "interjections rather than complete, carefully punctuated sentences."),
        Trait(id="t02", text="Short."),
        Trait(id="t03", text="Expresses uncertainty, hesitation or self-correction mid-reply, "
              "as people do when they think aloud."),
    ),
)  # fmt: skip


def scored_table(seed: int = 3) -> pd.DataFrame:
    """Ten personas at epochs 0, 1, 2; t01 rises with the epoch, t02 falls, t03 is noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for epoch in (0, 1, 2):
        for persona in range(10):
            ratings = {
                "t01": 2.0 + epoch + rng.normal(0, 0.3),
                "t02": 4.0 - 0.8 * epoch + rng.normal(0, 0.3),
                "t03": 3.0 + rng.normal(0, 0.6),
            }
            hl = ratings["t01"] - ratings["t02"]
            rows.append({"model": "tiny-base", "epoch": epoch, "prompt_id": f"p{persona}",
                         "hl": hl, **ratings})  # fmt: skip
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def evaluated():
    table = scored_table()
    report = evaluate_scores(table, QUESTIONNAIRE.trait_ids, base_epoch=0)
    intervals = trait_shift_intervals(table, QUESTIONNAIRE.trait_ids, base_epoch=0)
    return report, intervals


def test_hl_by_epoch_has_one_integer_tick_per_epoch(evaluated) -> None:
    from tasks.evaluation import _hl_by_epoch_figure

    report, _ = evaluated
    figure = _hl_by_epoch_figure(report)
    figure.canvas.draw()
    axis = figure.axes[0]
    assert list(axis.get_xticks()) == [0, 1, 2]
    assert [label.get_text() for label in axis.get_xticklabels()] == ["0", "1", "2"]


def test_trait_shifts_are_a_forest_plot_with_whole_word_labels(evaluated, tmp_path) -> None:
    from tasks.evaluation import LABEL_WIDTH, _trait_shift_figure

    report, intervals = evaluated
    assert report.best_epoch == {"tiny-base": 2}
    figure = _trait_shift_figure(report, QUESTIONNAIRE, intervals)
    figure.canvas.draw()
    figure.savefig(tmp_path / "trait_shifts.png")
    axis = figure.axes[0]
    labels = [label.get_text() for label in axis.get_yticklabels()]
    for trait, label in zip(QUESTIONNAIRE.traits, labels, strict=True):
        lines = label.split("\n")
        assert " ".join(lines) == f"{trait.id}: {trait.text}"  # full text, no word cut
        assert all(len(line) <= LABEL_WIDTH for line in lines)
        assert label == trait_label(trait.id, trait.text, LABEL_WIDTH)
    assert labels[0].count("\n") >= 2  # the long statement is wrapped, not truncated

    # each trait's horizontal bar spans its CI at the reported epoch, its dot is the shift
    expected = intervals[intervals["epoch"] == 2].set_index("trait_id").loc[QUESTIONNAIRE.trait_ids]
    bars = [c for c in axis.collections if len(c.get_segments()) == 1]
    spans = [tuple(sorted(s[:, 0])) for bar in bars for s in bar.get_segments()]
    np.testing.assert_allclose(spans, expected[["ci_low", "ci_high"]].to_numpy(), atol=1e-9)
    dots = [line.get_xdata()[0] for line in axis.get_lines() if line.get_marker() == "o"]
    np.testing.assert_allclose(dots, expected["shift"].to_numpy(), atol=1e-9)
    assert expected.loc["t01", "ci_low"] > 0 and expected.loc["t02", "ci_high"] < 0
