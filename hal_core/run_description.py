"""What an MLflow run or experiment is, in a few lines of markdown (MLflow shows them as the
description, ``mlflow.note.content``): the stage, its headline figures, the decision if any, and
a link to the Prefect flow run that made it."""

from __future__ import annotations

from collections.abc import Mapping

from hal_core import markdown
from hal_core.pipeline_report import REWARD_METRICS

STAGE_PURPOSES: dict[str, str] = {
    "hal_pipeline": "The HAL method end to end; each stage is a run nested under this one.",
    "validate_data": "Checks the HAL public data against its contracts; bad rows are quarantined.",
    "collect_statements": "A judge writes statements on what gave each Turing game away.",
    "derive_traits": "Clusters the judges' statements into a derived questionnaire of traits.",
    "fit_reward": "Fits the HL reward: a linear model of trait ratings that tells humans from AI.",
    "train_local_judge": "Trains a local judge that rates dialogues trait by trait.",
    "generate": "Generates doctor's-visit dialogues with the policy.",
    "rate_dialogues": "A judge rates dialogues on the questionnaire's traits.",
    "align": "Pairs the candidates by HL and trains the policy with DPO.",
    "evaluate": "Scores held-out dialogues with HL; guards and promotion of the policy.",
}
"""One line per stage: what its runs are for."""

HEADLINE_METRICS: dict[str, tuple[str, ...]] = {
    "hal_pipeline": (
        "cv.accuracy.mean",
        "pairs.n_pairs",
        "dpo.rewards.margins",
        "hl.gain",
        "guards.passed",
    ),
    "validate_data": ("validation.quarantined_rows",),
    "derive_traits": ("n_traits", "n_clusters", "stability.ari_mean", "coverage.mean_cosine"),
    "fit_reward": REWARD_METRICS,
    "train_local_judge": (
        "cv.hl.pearson",
        "cv.hl.pair_accuracy",
        "cv.spearman.mean_not_near_constant",
    ),
    "generate": (
        "generation.dialogues",
        "generation.degenerate_fraction",
        "generation.dialogues_per_minute",
    ),
    "rate_dialogues": ("items", "rated", "ood_fraction"),
    "align": ("pairs.n_pairs", "dpo.loss", "dpo.rewards.margins", "dpo.rewards.accuracies"),
    "evaluate": ("hl.gain", "hl.mean", "second_judge.hl.gain", "promotion.promote"),
}
"""The few metrics that say how a stage's run went; a stage not listed shows its first few."""

FALLBACK_FIGURES = 4
TEMPORARY_API_NOTE = "ran on a temporary Prefect API; start `hal serve` to see it"

EXPERIMENT_DESCRIPTIONS: dict[str, str] = {
    "experiment_data": "Data validation runs: each checks the HAL public tables.",
    "experiment_reward": "HL reward fits (HAL32Q, the derived questionnaire, the loop's).",
    "experiment_traits": "Statements from the Turing games and the traits derived from them.",
    "experiment_rating": "Judges rating dialogues trait by trait.",
    "experiment_judge": "Local judges trained on doctor's visits and Turing witnesses.",
    "experiment_alignment": "Generated dialogues and DPO training of the policy.",
    "experiment_evaluation": "HL of held-out dialogues per epoch; guards and promotion.",
    "experiment_pipeline": "End-to-end pipeline runs; each stage is a nested run.",
}
"""By the settings field that names the experiment (its name can be changed)."""


def experiment_description(field: str | None) -> str:
    """The experiment's description (markdown) for the settings field that names it."""
    what = EXPERIMENT_DESCRIPTIONS.get(field or "", "Runs of the HAL pipeline.")
    return (
        f"{what}\n\nEach run is one stage of the HAL pipeline, named `stage:role`; its "
        "description gives its headline figures and a link to its Prefect flow run."
    )


def headline_figures(stage: str, metrics: Mapping[str, float]) -> dict[str, float]:
    """The stage's headline metrics present in ``metrics``; a metric logged per model
    (``<model>/hl.gain``) counts for its name. A stage without a list shows its first few."""
    names = HEADLINE_METRICS.get(stage)
    if names is None:
        return {key: metrics[key] for key in sorted(metrics)[:FALLBACK_FIGURES]}
    figures = {}
    for name in names:
        keys = [key for key in sorted(metrics) if key == name or key.endswith(f"/{name}")]
        figures |= {key: metrics[key] for key in keys}
    return figures


def flow_run_url(ui_url: str, flow_run_id: str) -> str:
    """A flow run's page in a Prefect UI."""
    return f"{ui_url.rstrip('/')}/runs/flow-run/{flow_run_id}"


def prefect_link(flow_run_name: str, url: str, temporary: bool = False) -> str:
    """A markdown link to the flow run; on a temporary API (gone when its command ended) the
    link is to ``hal serve``'s UI on the same Prefect home, and says so."""
    link = f"[Prefect flow run {flow_run_name}]({url})"
    return f"{link} ({TEMPORARY_API_NOTE})" if temporary else link


def run_description(
    stage: str,
    run_name: str,
    metrics: Mapping[str, float],
    decision: str | None = None,
    prefect: str | None = None,
) -> str:
    """The run's description: what the stage is, its headline figures (rounded), the
    decision if any, and the markdown link to its Prefect flow run."""
    lines = [f"**{run_name}**: {STAGE_PURPOSES.get(stage, f'stage {stage}.')}", ""]
    figures = headline_figures(stage, metrics)
    if figures:
        rows = [[f"`{key}`", markdown.metric_value(value)] for key, value in figures.items()]
        lines += [*markdown.table(["figure", "value"], rows), ""]
    if decision:
        lines += [f"Decision: {decision}", ""]
    lines.append(prefect or "Not run in a Prefect flow run.")
    return "\n".join(lines) + "\n"
