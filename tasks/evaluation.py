"""Prefect tasks of the evaluation stage: read responses, rate, log results, publish summaries."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from hal_core.dialogue import SpeakerTags
from hal_core.evaluation import (
    EPOCH_COLUMN,
    MODEL_COLUMN,
    EpochFile,
    EvaluationReport,
    discover_epoch_files,
    ratings_from_results,
    read_responses,
    stored_ratings,
)
from hal_core.judging import Judge
from hal_core.pairwise import PairwiseResult
from hal_core.questionnaire import Questionnaire
from tasks.retries import retry_unless_bad_input
from tasks.tracking import log_figure, log_json, log_metrics, log_params

COMPARE_METRICS = (
    "cv.accuracy.mean",
    "cv_grouped.accuracy",
    "paired.accuracy",
    "n_selected",
    "dpo.rewards.margins",
    "hl.gain",
)
"""Metrics `hal compare` shows for each pipeline run (from the run or its stage runs)."""


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=retry_unless_bad_input)
def find_response_files(root: Path, models: Sequence[str] | None) -> list[EpochFile]:
    """List each model folder's per-epoch response files."""
    return discover_epoch_files(root, models)


@task(
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_unless_bad_input,
    cache_policy=NO_CACHE,
)
def read_response_files(files: Sequence[EpochFile]) -> pd.DataFrame:
    """Read every epoch's responses into one table."""
    return pd.concat([read_responses(item) for item in files], ignore_index=True)


@task(cache_policy=NO_CACHE)
def rate_responses(
    responses: pd.DataFrame,
    questionnaire: Questionnaire,
    judge: Judge | None = None,
    tags: SpeakerTags | None = None,
) -> tuple[pd.DataFrame, list[dict]]:
    """Rate each response's dialogue on the questionnaire: replayed when no judge is given."""
    if judge is None:
        return stored_ratings(responses, questionnaire), []
    results = judge.rate(
        responses["dialogue"].astype(str).tolist(),
        questionnaire,
        tags or SpeakerTags.doctor_visit(),
        item_ids=[
            f"{m}/e{e:02d}/{p}"
            for m, e, p in responses[["model", "epoch", "prompt_id"]].itertuples(index=False)
        ],
    )
    return ratings_from_results(results, questionnaire.trait_ids, responses.index)


def _metric_name(model: str, name: str) -> str:
    return f"{model}/{name}"


def _log_stepped_metrics(run_id: str, entries: Sequence[tuple[str, float, int]]) -> None:
    """Log (key, value, step) metrics in batches of 1000; NaN values are left out."""
    timestamp = int(time.time() * 1000)
    metrics = [
        Metric(key, float(value), timestamp, int(step))
        for key, value, step in entries
        if pd.notna(value)
    ]
    client = MlflowClient()
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def log_evaluation(
    run_id: str,
    report: EvaluationReport,
    failures: list[dict],
    input_hashes: dict[str, str],
) -> None:
    """Log per-epoch statistics (step = epoch), trait shifts and tables to the MLflow run."""
    entries = []
    for (model, epoch), row in report.summary.set_index([MODEL_COLUMN, EPOCH_COLUMN]).iterrows():
        metrics = {
            _metric_name(model, f"hl.{key}"): row[key]
            for key in ("mean", "std", "ci_low", "ci_high", "n")
        }
        metrics[_metric_name(model, "hl.diff")] = row["diff_to_base"]
        if epoch != report.base_epoch:
            metrics |= {
                _metric_name(model, "ttest.t"): row["t"],
                _metric_name(model, "ttest.p"): row["p"],
                _metric_name(model, "ttest.n_pairs"): row["n_pairs"],
            }
        entries += [(key, value, int(epoch)) for key, value in metrics.items()]
    for row in report.shifts.itertuples(index=False):
        entries.append((_metric_name(row.model, f"shift.{row.trait_id}"), row.shift, row.epoch))
    _log_stepped_metrics(run_id, entries)
    gains = report.gains
    final = {_metric_name(m, "best_epoch"): e for m, e in report.best_epoch.items()}
    final |= {_metric_name(m, "hl.gain"): g for m, g in gains.items()}
    final |= {"hl.gain": sum(gains.values()) / len(gains), "rating.failed": len(failures)}
    log_metrics(run_id, final)
    client = MlflowClient()
    client.log_text(run_id, report.summary.to_csv(index=False), "evaluation/summary.csv")
    client.log_text(run_id, report.shifts.to_csv(index=False), "evaluation/trait_shifts.csv")
    log_json(
        run_id,
        {
            "best_epoch": report.best_epoch,
            "hl_gain": gains,
            "base_epoch": report.base_epoch,
            "trait_ids": report.trait_ids,
            "input_sha256": input_hashes,
            "failures": failures,
        },
        "evaluation/report.json",
    )


def _hl_by_epoch_figure(report: EvaluationReport):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    for model, part in report.summary.groupby(MODEL_COLUMN):
        axis.errorbar(
            part[EPOCH_COLUMN],
            part["mean"],
            yerr=[part["mean"] - part["ci_low"], part["ci_high"] - part["mean"]],
            marker="o",
            capsize=3,
            label=model,
        )
    axis.set_xlabel("epoch")
    axis.set_ylabel(f"mean HL score ({report.confidence:.0%} CI)")
    axis.set_title("HL score by epoch")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return figure


def _trait_shift_figure(report: EvaluationReport, questionnaire: Questionnaire):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted(report.best_epoch)
    columns = min(3, len(models))
    rows = -(-len(models) // columns)
    figure, axes = plt.subplots(
        rows,
        columns,
        figsize=(6 * columns, 0.35 * len(report.trait_ids) * rows + 1.5),
        squeeze=False,
        sharex=True,
    )
    texts = questionnaire.texts()
    labels = [f"{t}: {texts.get(t, '')[:40]}" for t in report.trait_ids]
    for axis, model in zip(axes.flat, models, strict=False):
        epoch = report.best_epoch[model]
        part = (
            report.shifts[
                (report.shifts[MODEL_COLUMN] == model) & (report.shifts[EPOCH_COLUMN] == epoch)
            ]
            .set_index("trait_id")
            .loc[report.trait_ids]
        )
        colors = ["tab:green" if s >= 0 else "tab:red" for s in part["shift"]]
        axis.barh(labels, part["shift"], color=colors)
        axis.axvline(0, color="black", linewidth=0.8)
        axis.invert_yaxis()
        axis.set_title(f"{model}: epoch {epoch:02d} vs {report.base_epoch:02d}", fontsize=9)
        axis.tick_params(axis="y", labelsize=7)
    for axis in list(axes.flat)[len(models) :]:
        axis.set_visible(False)
    figure.supxlabel("shift of mean Likert rating (best epoch minus base)")
    figure.tight_layout()
    return figure


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def log_evaluation_plots(
    run_id: str, report: EvaluationReport, questionnaire: Questionnaire
) -> list[str]:
    """Log the HL-by-epoch and per-trait shift plots to the MLflow run."""
    paths = ["plots/hl_by_epoch.png", "plots/trait_shifts.png"]
    log_figure(run_id, _hl_by_epoch_figure(report), paths[0])
    log_figure(run_id, _trait_shift_figure(report, questionnaire), paths[1])
    return paths


def _markdown_summary(
    report: EvaluationReport, run_id: str, plots: Sequence[str], failures: Sequence[dict]
) -> str:
    lines = [
        "# HAL evaluation",
        "",
        f"MLflow run `{run_id}`; plots: {', '.join(f'`{p}`' for p in plots)}.",
        f"Rating failures: {len(failures)}.",
        "",
        "| model | best epoch | HL gain | base mean | best mean | one-sided paired t (p) |",
        "|---|---|---|---|---|---|",
    ]
    table = report.summary.set_index([MODEL_COLUMN, EPOCH_COLUMN])
    for model, epoch in sorted(report.best_epoch.items()):
        best, base = table.loc[(model, epoch)], table.loc[(model, report.base_epoch)]
        lines.append(
            f"| {model} | {epoch:02d} | {best['diff_to_base']:+.3f} | {base['mean']:.3f} | "
            f"{best['mean']:.3f} | {best['t']:.2f} ({best['p']:.2g}) |"
        )
    lines += ["", "Largest trait shifts at the best epoch:", ""]
    for model, epoch in sorted(report.best_epoch.items()):
        part = report.shifts[
            (report.shifts[MODEL_COLUMN] == model) & (report.shifts[EPOCH_COLUMN] == epoch)
        ]
        top = part.reindex(part["shift"].abs().sort_values(ascending=False).index).head(4)
        shifts = ", ".join(
            f"{t} {s:+.2f}" for t, s in zip(top["trait_id"], top["shift"], strict=True)
        )
        lines.append(f"- {model}: {shifts}")
    return "\n".join(lines) + "\n"


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def publish_evaluation(
    report: EvaluationReport, run_id: str, plots: Sequence[str], failures: Sequence[dict]
) -> None:
    """Show the evaluation summary and per-epoch table as Prefect artifacts."""
    create_markdown_artifact(
        _markdown_summary(report, run_id, plots, failures),
        key="evaluation-summary",
        description="HL gain, paired t-tests and largest trait shifts per model.",
    )
    table = report.summary.round(6).astype(object).where(report.summary.notna(), None)
    create_table_artifact(
        table.to_dict(orient="records"),
        key="evaluation-epochs",
        description="HL score per model and epoch: mean, std, CI, difference to base, t-test.",
    )


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def log_pairwise(run_id: str, result: PairwiseResult) -> None:
    """Log win rates and Elo to MLflow and show them as a Prefect table."""
    metrics = {}
    for model, row in result.table.iterrows():
        metrics |= {
            f"pairwise/{model}/win_rate": row["win_rate"],
            f"pairwise/{model}/elo": row["elo"],
            f"pairwise/{model}/elo_std": row["elo_std"],
            f"pairwise/{model}/games": row["games"],
        }
    metrics |= {"pairwise.games": result.n_games, "pairwise.incomplete": result.n_incomplete}
    log_metrics(run_id, metrics)
    log_params(run_id, {"pairwise.orderings": result.n_orderings, "pairwise.seed": result.seed})
    table = result.table.reset_index()
    MlflowClient().log_text(run_id, table.to_csv(index=False), "evaluation/pairwise.csv")
    create_table_artifact(
        table.round(4).to_dict(orient="records"),
        key="evaluation-pairwise",
        description=f"Win rate and Elo (K=32, mean of {result.n_orderings} orderings).",
    )


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def fetch_pipeline_runs(experiment: str, max_runs: int = 20) -> pd.DataFrame:
    """Top-level runs of an experiment with the comparison metrics of them or their stages."""
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    columns = ["run_id", "run_name", "start", "status", *COMPARE_METRICS]
    if found is None:
        return pd.DataFrame(columns=columns)
    runs = []
    token = None
    while True:
        page = client.search_runs(
            [found.experiment_id],
            order_by=["attributes.start_time DESC"],
            page_token=token,
            max_results=1000,
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    children: dict[str, list] = {}
    for run in runs:
        parent = run.data.tags.get("mlflow.parentRunId")
        if parent:
            children.setdefault(parent, []).append(run)
    rows = []
    for run in [r for r in runs if "mlflow.parentRunId" not in r.data.tags][:max_runs]:
        metrics: dict[str, float] = {}
        # A stage's metric fills a name the pipeline run itself did not log.
        for source in [*children.get(run.info.run_id, []), run]:
            metrics |= {k: v for k, v in source.data.metrics.items() if k in COMPARE_METRICS}
        rows.append(
            {
                "run_id": run.info.run_id,
                "run_name": run.info.run_name,
                "start": pd.Timestamp(run.info.start_time, unit="ms").strftime("%Y-%m-%d %H:%M"),
                "status": run.info.status,
                **metrics,
            }
        )
    return pd.DataFrame(rows, columns=columns)


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def log_stored_score_check(run_id: str, check: pd.DataFrame) -> None:
    """Log the stored score's per-epoch mean beside ours, and their largest difference."""
    _log_stepped_metrics(
        run_id,
        [
            (_metric_name(row.model, "hl.stored_mean"), row.stored_mean, row.epoch)
            for row in check.itertuples(index=False)
        ],
    )
    log_metrics(run_id, {"hl.stored_max_abs_diff": float(check["max_abs_diff"].max())})
