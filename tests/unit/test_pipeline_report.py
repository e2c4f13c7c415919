"""The pipeline report is markdown that MLflow's and Prefect's views render: headings, tables
with header and separator rows, rounded numbers."""

from __future__ import annotations

import re

from pydantic import BaseModel

from flows.evaluate import EpochHL, EvaluateResult
from hal_core.evaluation import (
    BeforeAfter,
    ExampleDialogue,
    GuardCheck,
    GuardReport,
    PromotionDecision,
)
from hal_core.pipeline_report import pipeline_report, summary_metrics

LONG = 0.12345678901234567  # a float as repr writes it: 17 significant digits


class RewardStandIn(BaseModel):
    """What the report reads of a fit_reward result: its metrics."""

    metrics: dict[str, float]


def evaluation() -> EvaluateResult:
    guards = GuardReport(
        model="tiny-base",
        epoch=1,
        base_epoch=0,
        checks=[
            GuardCheck(
                name="words_per_turn_drift",
                value=0.3141592653589793,
                threshold=0.5,
                rule="<=",
                passed=True,
                description="relative change of words per patient turn",
            ),
            GuardCheck(
                name="distinct_2",
                value=None,
                threshold=0.3,
                rule=">=",
                passed=False,
                description="distinct bigrams",
                note="no bigram to count",
            ),
        ],
    )
    example = BeforeAfter(
        label="largest gain",
        model="tiny-base",
        persona_id="persona-03",
        gain=1.2345678901234,
        before=ExampleDialogue(dialogue_id="p3-base", epoch=0, hl=-0.4444444444, dialogue="P: hi"),
        after=ExampleDialogue(dialogue_id="p3-e1", epoch=1, hl=0.7901234567, dialogue="P: hey"),
    )
    return EvaluateResult(
        run_id="eval-run",
        mode="generated",
        best_epoch={"tiny-base": 1},
        hl_by_epoch={
            "tiny-base": {
                0: EpochHL(mean=-1.0 / 3, ci_low=-0.7777777777, ci_high=0.1111111111, n=12),
                1: EpochHL(mean=LONG, ci_low=None, ci_high=0.5555555555, n=11),
            }
        },
        hl_gain={"tiny-base": 0.45678901234567},
        hl_gain_by_epoch={"tiny-base": {0: 0.0, 1: 0.45678901234567}},
        p_value={"tiny-base": 0.000123456789},
        p_value_by_epoch={"tiny-base": {1: 0.000123456789}},
        second_judge_gain={"tiny-base": -0.0123456789},
        guards_passed=False,
        failed_guards=["distinct_2"],
        guards=guards,
        examples=[example],
        promotion=PromotionDecision(promote=False, reasons=["guards: 1 failed: distinct_2"]),
        registered_model="hal-policy",
        registered_version="3",
        rating_failures=0,
    )


def render() -> str:
    results = {
        "fit_reward": RewardStandIn(
            metrics={"cv.accuracy.mean": 0.8123456789012345, "n_selected": 9}
        ),
        "evaluate": evaluation(),
    }
    metrics = summary_metrics(results)
    return pipeline_report("pipe-run", results, ["derive_traits", "fit_reward"], metrics)


def tables(text: str) -> list[list[str]]:
    """Consecutive ``|``-lines, each table as its list of lines."""
    found, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            found.append(current)
            current = []
    return found


def test_the_report_has_headings_and_tables_with_header_and_separator_rows() -> None:
    text = render()
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert headings[0] == "# HAL pipeline run `pipe-run`"
    assert "## Metrics" in headings and "## Policy tiny-base" in headings
    assert "## hal-policy v3: not promoted" in headings
    assert any(h.startswith("## Before and after: persona persona-03") for h in headings)
    found = tables(text)
    assert len(found) == 3  # metrics, HL per epoch, guards
    for lines in found:
        columns = lines[0].count("|")
        assert re.fullmatch(r"\|(---\|)+", lines[1]), lines[1]
        assert lines[1].count("|") == columns and len(lines) > 2
        assert all(line.count("|") == columns for line in lines)
    metrics, epochs, guards = found
    assert metrics[0] == "| metric | value |"
    assert "| `cv.accuracy.mean` | 0.8123 |" in metrics and "| `n_selected` | 9 |" in metrics
    assert epochs[2].startswith("| 0 | -0.333 | [-0.778, 0.111] | 12 |")
    assert epochs[3] == "| 1 | 0.123 | [n/a, 0.556] | 11 | candidate |"
    assert "| distinct_2 | n/a | >= 0.3 | **FAILED** | no bigram to count |" in guards


def test_numbers_are_rounded_and_the_dialogues_fenced() -> None:
    text = render()
    decimals = re.findall(r"\d+\.\d+", text)
    significant = {d: len(d.replace(".", "").lstrip("0")) for d in decimals}
    assert decimals and max(significant.values()) <= 4, significant
    assert "| `hl.gain.p` | 0.0001235 |" in text  # small values keep their digits
    assert "gain vs base: **+0.457** (one-sided paired p 0.00012)" in text
    assert "second judge's gain: -0.012 (down or flat)" in text
    assert "guards at epoch 1 vs base: 1 of 2 passed" in text
    assert "```text\nP: hi\n```" in text and "```text\nP: hey\n```" in text
    # no line is indented: indented text is a code block (or one paragraph) in markdown
    assert not [line for line in text.splitlines() if line.startswith("    ")]


def test_a_run_without_an_evaluation_still_reports_its_metrics() -> None:
    results = {"fit_reward": RewardStandIn(metrics={"paired.accuracy": 2 / 3})}
    text = pipeline_report("pipe-run", results, [], summary_metrics(results))
    assert "Cached stages: none." in text and "| `paired.accuracy` | 0.6667 |" in text
    assert "## Policy" not in text
