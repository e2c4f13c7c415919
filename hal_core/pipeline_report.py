"""What a pipeline run found, in numbers and in words: the metrics its run records and the
markdown report ``hal pipeline`` prints (headings and tables, so that MLflow's and Prefect's
markdown views show it as a report). Reads the stage results by label (``fit_reward``,
``align``, ``evaluate``, ...); a stage that did not run is left out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from hal_core import markdown
from hal_core.markdown import metric_value, number

REWARD_METRICS = ("cv.accuracy.mean", "cv_grouped.accuracy", "paired.accuracy", "n_selected")


def _dump(result: BaseModel | None) -> dict[str, Any]:
    return result.model_dump(mode="json") if result is not None else {}


def summary_metrics(results: Mapping[str, BaseModel]) -> dict[str, float]:
    """The reward's accuracy, the pairs and DPO figures, and the policy's HL gain."""
    metrics: dict[str, float] = {}
    for label, prefix in (("fit_reward", ""), ("fit_reward:derived", "derived."),
                          ("fit_reward:loop", "loop.")):  # fmt: skip
        reward = _dump(results.get(label)).get("metrics", {})
        metrics |= {f"{prefix}{k}": float(reward[k]) for k in REWARD_METRICS if k in reward}
    for key, value in _dump(results.get("align")).get("summary", {}).items():
        if key.startswith(("dpo.", "pairs.")) and isinstance(value, int | float):
            metrics[key] = float(value)
    evaluation = _dump(results.get("evaluate"))
    gains = [g for g in (evaluation.get("hl_gain") or {}).values() if g is not None]
    if gains:
        metrics["hl.gain"] = sum(gains) / len(gains)
    p_values = [p for p in (evaluation.get("p_value") or {}).values() if p is not None]
    if p_values:
        metrics["hl.gain.p"] = max(p_values)
    second = [g for g in (evaluation.get("second_judge_gain") or {}).values() if g is not None]
    if second:
        metrics["second_judge.hl.gain"] = sum(second) / len(second)
    if evaluation.get("guards_passed") is not None:
        metrics["guards.passed"] = float(evaluation["guards_passed"])
    return metrics


def _hl_table(epochs: Mapping[str, Any], best: int | None) -> list[str]:
    rows = [
        [
            int(epoch),
            number(hl["mean"]),
            f"[{number(hl['ci_low'])}, {number(hl['ci_high'])}]",
            hl["n"],
            "candidate" if int(epoch) == best else "",
        ]
        for epoch, hl in sorted(epochs.items(), key=lambda item: int(item[0]))
    ]
    return markdown.table(["epoch", "mean HL", "95% CI", "personas", "note"], rows)


def _policy_sections(evaluation: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    second_gains = evaluation.get("second_judge_gain") or {}
    for model, epochs in (evaluation.get("hl_by_epoch") or {}).items():
        best = evaluation["best_epoch"].get(model)
        lines += [f"## Policy {model}", "", "HL per epoch (mean over personas, 95% CI):", ""]
        lines += _hl_table(epochs, best)
        gain, p = evaluation["hl_gain"].get(model), evaluation["p_value"].get(model)
        lines += [
            "",
            f"- gain vs base: **{number(gain, '+.3f')}** (one-sided paired p {number(p, '.2g')})",
        ]
        if model in second_gains:
            second = second_gains[model]
            direction = "n/a" if second is None else "up" if second > 0 else "down or flat"
            lines.append(f"- second judge's gain: {number(second, '+.3f')} ({direction})")
        lines.append("")
    guards = evaluation.get("guards")
    if guards:
        passed = sum(1 for check in guards["checks"] if check["passed"])
        lines += [
            "## Guards against reward hacking",
            "",
            f"Reward-hacking guards at epoch {guards['epoch']} vs base: {passed} of "
            f"{len(guards['checks'])} passed (base is epoch {guards['base_epoch']}).",
            "",
        ]
        rows = [
            [
                check["name"],
                number(check["value"], ".4g"),
                f"{check['rule']} {check['threshold']:g}",
                "ok" if check["passed"] else "**FAILED**",
                check.get("note") or "",
            ]
            for check in guards["checks"]
        ]
        lines += [*markdown.table(["guard", "value", "limit", "verdict", "note"], rows), ""]
    decision = evaluation.get("promotion")
    if decision:
        version = evaluation.get("registered_version")
        model = evaluation.get("registered_model") or "hal-policy"
        verdict = "promoted to @champion" if decision["promote"] else "not promoted"
        name = f"{model} v{version}" if version else model
        lines += [f"## {name}: {verdict}", "", *[f"- {r}" for r in decision["reasons"]], ""]
    for example in (evaluation.get("examples") or [])[:1]:
        before, after = example["before"], example["after"]
        lines += [
            f"## Before and after: persona {example['persona_id']} ({example['label']})",
            "",
            f"- before: epoch {before['epoch']}, HL {number(before.get('hl'), '+.3f')} "
            f"(`{before['dialogue_id']}`)",
            f"- after: epoch {after['epoch']}, HL {number(after.get('hl'), '+.3f')} "
            f"(`{after['dialogue_id']}`)",
            "",
            f"### Before (epoch {before['epoch']})",
            "",
            *markdown.fenced(before["dialogue"]),
            "",
            f"### After (epoch {after['epoch']})",
            "",
            *markdown.fenced(after["dialogue"]),
            "",
        ]
    return lines


def pipeline_report(
    run_id: str,
    results: Mapping[str, BaseModel],
    cached: list[str],
    metrics: Mapping[str, float],
) -> str:
    """The report ``hal pipeline`` prints and logs as ``pipeline_report.md``, in markdown: the
    run, the rewards, the pairs and DPO, then the policy (HL per epoch, guards, promotion and
    one persona before and after)."""
    lines = [
        f"# HAL pipeline run `{run_id}`",
        "",
        f"Cached stages: {', '.join(f'`{label}`' for label in cached) or 'none'}.",
        "",
        "## Metrics",
        "",
    ]
    if metrics:
        rows = [[f"`{name}`", metric_value(value)] for name, value in metrics.items()]
        lines += markdown.table(["metric", "value"], rows)
    else:
        lines.append("No stage reported a metric.")
    lines.append("")
    evaluation = _dump(results.get("evaluate"))
    if evaluation.get("mode") == "generated":
        lines += _policy_sections(evaluation)
    return "\n".join(lines).rstrip() + "\n"
