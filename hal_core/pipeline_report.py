"""What a pipeline run found, in numbers and in words: the metrics its run records and the
report ``hal pipeline`` prints. Reads the stage results by label (``fit_reward``,
``align``, ``evaluate``, ...); a stage that did not run is left out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

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


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _policy_lines(evaluation: dict[str, Any]) -> list[str]:
    lines = []
    for model, epochs in (evaluation.get("hl_by_epoch") or {}).items():
        best = evaluation["best_epoch"].get(model)
        lines.append(f"policy {model}: HL per epoch (mean [95% CI], n personas)")
        for epoch, hl in sorted(epochs.items(), key=lambda item: int(item[0])):
            marker = "  <- candidate" if int(epoch) == best else ""
            lines.append(
                f"  epoch {int(epoch)}: {_number(hl['mean'])} "
                f"[{_number(hl['ci_low'])}, {_number(hl['ci_high'])}], n {hl['n']}{marker}"
            )
        gain, p = evaluation["hl_gain"].get(model), evaluation["p_value"].get(model)
        lines.append(f"  gain vs base: {_number(gain)} (one-sided paired p {_number(p, 4)})")
        second = (evaluation.get("second_judge_gain") or {}).get(model)
        if model in (evaluation.get("second_judge_gain") or {}):
            direction = "n/a" if second is None else "up" if second > 0 else "down or flat"
            lines.append(f"  second judge's gain: {_number(second)} ({direction})")
    guards = evaluation.get("guards")
    if guards:
        lines.append(f"guards at epoch {guards['epoch']} vs base:")
        for check in guards["checks"]:
            verdict = "ok" if check["passed"] else "FAILED"
            lines.append(
                f"  {check['name']}: {_number(check['value'])} {check['rule']} "
                f"{check['threshold']} {verdict} {check.get('note') or ''}".rstrip()
            )
    decision = evaluation.get("promotion")
    if decision:
        version = evaluation.get("registered_version")
        verdict = "promoted to @champion" if decision["promote"] else "not promoted"
        lines.append(f"hal-policy v{version}: {verdict}")
        lines += [f"  - {reason}" for reason in decision["reasons"]]
    for example in (evaluation.get("examples") or [])[:1]:
        lines.append(
            f"persona {example['persona_id']} ({example['label']}), HL "
            f"{_number(example['before'].get('hl'))} -> {_number(example['after'].get('hl'))}"
        )
        lines.append("  before:")
        lines += [f"    {line}" for line in example["before"]["dialogue"].splitlines()]
        lines.append("  after:")
        lines += [f"    {line}" for line in example["after"]["dialogue"].splitlines()]
    return lines


def pipeline_report(
    run_id: str,
    results: Mapping[str, BaseModel],
    cached: list[str],
    metrics: Mapping[str, float],
) -> str:
    """The lines ``hal pipeline`` prints: the run, the rewards, the pairs and DPO, the policy."""
    lines = [f"pipeline run {run_id}; cached stages: {', '.join(cached) or 'none'}"]
    lines += [f"  {name}: {value:.4f}" for name, value in metrics.items()]
    evaluation = _dump(results.get("evaluate"))
    if evaluation.get("mode") == "generated":
        lines += _policy_lines(evaluation)
    return "\n".join(lines)
