"""Prefect tasks of the evaluation stage: read responses, load rewards, log results, register
the evaluated policy, publish summaries."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from hal_core import markdown
from hal_core.evaluation import (
    EPOCH_COLUMN,
    MODEL_COLUMN,
    BeforeAfter,
    EpochFile,
    EvaluationReport,
    EvaluationReward,
    GuardReport,
    PromotionDecision,
    before_after_markdown,
    combine_generated,
    discover_epoch_files,
    json_safe,
    read_generated,
    read_responses,
    reward_readings,
)
from hal_core.markdown import number
from hal_core.pairwise import PairwiseResult
from hal_core.paper import is_paper_weights, load_paper_weights
from hal_core.questionnaire import Questionnaire
from hal_core.settings import HalSettings
from hal_core.trait_shifts import at_epochs, trait_label
from tasks.reports import publish_markdown
from tasks.retries import retry_unless_bad_input
from tasks.scoring import MLFLOW_SCHEMES, load_reward
from tasks.tracking import log_figure, log_file, log_metrics, log_params

COMPARE_METRICS = (
    "cv.accuracy.mean",
    "cv_grouped.accuracy",
    "paired.accuracy",
    "n_selected",
    "dpo.rewards.margins",
    "hl.gain",
)
"""Metrics `hal compare` shows for each pipeline run (from the run or its stage runs)."""


@task(
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_unless_bad_input,
    cache_policy=NO_CACHE,
)
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


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def read_generated_files(paths: Sequence[Path], base_epoch: int) -> pd.DataFrame:
    """Read one policy's generated-dialogue tables (one per checkpoint) into one table."""
    return combine_generated([read_generated(path) for path in paths], base_epoch)


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def load_evaluation_reward(
    reference: str, settings: HalSettings, questionnaire: Questionnaire
) -> EvaluationReward:
    """The reward to score with, read by :func:`tasks.scoring.load_reward` (a JSON file, the
    paper's ``{w, b}`` or a registered model); the paper's weights on the published HAL16Q
    come as the paper-compatible score with the by-id score beside it."""
    reward = load_reward.fn(reference, settings)
    paper = None
    if not reference.startswith(MLFLOW_SCHEMES):
        path = settings.input_path(reference)
        if is_paper_weights(json.loads(path.read_text(encoding="utf-8"))):
            paper = load_paper_weights(path)
    return reward_readings(reward, questionnaire, paper)


def _key(model: str, name: str, per_model: bool) -> str:
    return f"{model}/{name}" if per_model else name


def _log_stepped_metrics(run_id: str, entries: Sequence[tuple[str, float, int]]) -> None:
    """Log (key, value, step) metrics in batches of 1000; NaN values are left out."""
    timestamp = int(time.time() * 1000)
    metrics = [
        Metric(key, float(value), timestamp, int(step))
        for key, value, step in entries
        if value is not None and pd.notna(value)
    ]
    client = MlflowClient()
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def _finite(values: Mapping[str, float]) -> dict[str, float]:
    return {key: float(v) for key, v in values.items() if v is not None and math.isfinite(v)}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def log_scores(
    run_id: str,
    report: EvaluationReport,
    name: str,
    epochs: Mapping[str, int],
    per_model: bool = True,
) -> dict[str, float]:
    """Log one score's per-epoch curves (step = epoch) and its gain at ``epochs``.

    Keys: ``<name>.mean|std|ci_low|ci_high|n|diff`` per epoch, ``<name>.ttest.t|p|n_pairs``
    per trained epoch (``ttest.*`` for the primary ``hl``), ``<name>.gain`` at the chosen
    epoch; prefixed ``<model>/`` when ``per_model``, and the run-level ``<name>.gain`` is the
    mean over models. NaN values are left out, not logged.
    """
    ttest = "ttest" if name == "hl" else f"{name}.ttest"
    entries = []
    for row in report.summary.itertuples(index=False):
        model, epoch = str(getattr(row, MODEL_COLUMN)), int(getattr(row, EPOCH_COLUMN))
        values = {f"{name}.{k}": getattr(row, k) for k in ("mean", "std", "ci_low", "ci_high", "n")}
        values[f"{name}.diff"] = row.gain
        if name == "hl":
            values[f"hl.mean.e{epoch}"] = row.mean
        if epoch != report.base_epoch:
            values |= {f"{ttest}.t": row.t, f"{ttest}.p": row.p, f"{ttest}.n_pairs": row.n_pairs}
        entries += [(_key(model, k, per_model), v, epoch) for k, v in values.items()]
    _log_stepped_metrics(run_id, entries)
    gains = {model: report.value(model, epoch, "gain") for model, epoch in epochs.items()}
    final = {_key(m, f"{name}.gain", per_model): g for m, g in _finite(gains).items()}
    if per_model and _finite(gains):
        final[f"{name}.gain"] = _mean(list(_finite(gains).values()))
    log_metrics(run_id, final)
    return gains


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def log_evaluation(
    run_id: str, report: EvaluationReport, failures: list[dict], per_model: bool = True
) -> None:
    """Log trait shifts (step = epoch), best epochs, failures and the per-epoch tables to the
    MLflow run."""
    _log_stepped_metrics(
        run_id,
        [
            (_key(row.model, f"shift.{row.trait_id}", per_model), row.shift, row.epoch)
            for row in report.shifts.itertuples(index=False)
        ],
    )
    final = {_key(m, "best_epoch", per_model): e for m, e in report.best_epoch.items()}
    final["rating.failed"] = len(failures)
    log_metrics(run_id, final)
    client = MlflowClient()
    client.log_text(run_id, report.summary.to_csv(index=False), "evaluation/summary.csv")
    client.log_text(run_id, report.shifts.to_csv(index=False), "evaluation/trait_shifts.csv")


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def log_out_of_domain(
    run_id: str, prefix: str, fractions: Mapping[tuple[str, int], float], per_model: bool = True
) -> None:
    """Log a judge's out-of-domain share per epoch (``<prefix>ood_fraction``, step = epoch);
    nothing when the judge never says."""
    _log_stepped_metrics(
        run_id,
        [
            (_key(model, f"{prefix}ood_fraction", per_model), value, epoch)
            for (model, epoch), value in fractions.items()
        ],
    )


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def log_json_report(run_id: str, payload: Mapping, artifact_file: str) -> None:
    """Write a JSON artifact in which a value that cannot be computed is null, never NaN."""
    text = json.dumps(json_safe(dict(payload)), indent=2, default=str, allow_nan=False)
    MlflowClient().log_text(run_id, text, artifact_file)


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def log_generated_tables(run_id: str, paths: Sequence[Path]) -> list[str]:
    """Log the evaluated generated-dialogue tables as artifacts (``generated/``)."""
    for path in paths:
        log_file(run_id, path, "generated")
    return [f"generated/{Path(path).name}" for path in paths]


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def log_guards(
    run_id: str,
    statistics: pd.DataFrame,
    per_epoch: Sequence[GuardReport],
    candidate: GuardReport | None,
) -> None:
    """Log the text statistics and every guard's value per epoch (step = epoch), the candidate
    epoch's guard outcomes and ``evaluation/guards.json``."""
    columns = [c for c in statistics.columns if c not in (MODEL_COLUMN, EPOCH_COLUMN)]
    entries = [
        (f"text.{column}", getattr(row, column), int(getattr(row, EPOCH_COLUMN)))
        for row in statistics.itertuples(index=False)
        for column in columns
    ]
    entries += [
        (f"guard.{check.name}", check.value, report.epoch)
        for report in per_epoch
        for check in report.checks
    ]
    _log_stepped_metrics(run_id, entries)
    payload: dict[str, object] = {"statistics": statistics.to_dict(orient="records")}
    if candidate is not None:
        final = {f"guard.{c.name}.passed": float(c.passed) for c in candidate.checks}
        final |= {f"guard.{c.name}.threshold": c.threshold for c in candidate.checks}
        final["guards.passed"] = float(candidate.passed)
        log_metrics(run_id, final)
        payload |= {"candidate": candidate.model_dump(), "passed": candidate.passed}
    payload["per_epoch"] = [report.model_dump() for report in per_epoch]
    log_json_report.fn(run_id, payload, "evaluation/guards.json")


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def log_examples(run_id: str, examples: Sequence[BeforeAfter]) -> list[str]:
    """Log before/after examples as ``examples/before_after.md`` and ``.json``."""
    client = MlflowClient()
    client.log_text(run_id, before_after_markdown(examples), "examples/before_after.md")
    payload = {"examples": [item.model_dump() for item in examples]}
    log_json_report.fn(run_id, payload, "examples/before_after.json")
    return ["examples/before_after.md", "examples/before_after.json"]


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
    # Epochs are checkpoints, not a continuous axis: one tick per evaluated epoch.
    axis.set_xticks(sorted(int(e) for e in report.summary[EPOCH_COLUMN].unique()))
    axis.set_xlabel("epoch")
    axis.set_ylabel(f"mean HL score ({report.confidence:.0%} CI)")
    axis.set_title("HL score by epoch")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return figure


LABEL_WIDTH = 44
"""Characters per line of a wrapped trait label on the plots."""


def _trait_shift_figure(
    report: EvaluationReport, questionnaire: Questionnaire, intervals: pd.DataFrame
):
    """A forest plot per model: each trait's mean paired shift at the reported epoch with its
    CI, labelled by trait id and full statement (wrapped, never cut)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted(report.best_epoch)
    texts = questionnaire.texts()
    labels = [trait_label(t, texts.get(t, ""), LABEL_WIDTH) for t in report.trait_ids]
    lines = sum(label.count("\n") + 1 for label in labels)
    columns = min(2, len(models))
    rows = -(-len(models) // columns)
    figure, axes = plt.subplots(
        rows,
        columns,
        figsize=(8.5 * columns, (0.16 * lines + 0.1 * len(labels) + 1.0) * rows + 0.8),
        squeeze=False,
        sharex=True,
    )
    chosen = at_epochs(intervals, report.best_epoch)
    positions = list(range(len(labels)))
    for axis, model in zip(axes.flat, models, strict=False):
        epoch = report.best_epoch[model]
        part = chosen[chosen[MODEL_COLUMN] == model].set_index("trait_id").reindex(report.trait_ids)
        shift = part["shift"].to_numpy(float)
        low = (part["shift"] - part["ci_low"]).fillna(0).to_numpy(float)
        high = (part["ci_high"] - part["shift"]).fillna(0).to_numpy(float)
        clear_up, clear_down = part["ci_low"] > 0, part["ci_high"] < 0
        colors = [
            "tab:green" if up else "tab:red" if down else "tab:gray"
            for up, down in zip(clear_up, clear_down, strict=True)
        ]
        for y, x, left, right, color in zip(positions, shift, low, high, colors, strict=True):
            axis.errorbar(x, y, xerr=[[left], [right]], fmt="o", color=color, capsize=3, ms=5)
        axis.axvline(0, color="black", linewidth=0.8)
        axis.set_yticks(positions, labels, fontsize=7)
        axis.set_ylim(len(labels) - 0.5, -0.5)
        axis.grid(axis="x", alpha=0.3)
        pairs = int(part["n_pairs"].max()) if part["n_pairs"].notna().any() else 0
        axis.set_title(
            f"{model}: epoch {epoch:02d} vs {report.base_epoch:02d} ({pairs} personas)",
            fontsize=9,
        )
    for axis in list(axes.flat)[len(models) :]:
        axis.set_visible(False)
    figure.supxlabel(
        f"shift of the mean Likert rating, epoch minus base, paired by persona "
        f"({report.confidence:.0%} CI; green/red: the CI excludes 0)",
        fontsize=9,
    )
    figure.tight_layout()
    return figure


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def log_evaluation_plots(
    run_id: str, report: EvaluationReport, questionnaire: Questionnaire, intervals: pd.DataFrame
) -> list[str]:
    """Log the HL-by-epoch plot and the trait-shift forest plot to the MLflow run, and the
    shifts with their CIs as ``evaluation/trait_shift_intervals.csv``."""
    paths = ["plots/hl_by_epoch.png", "plots/trait_shifts.png"]
    log_figure(run_id, _hl_by_epoch_figure(report), paths[0])
    log_figure(run_id, _trait_shift_figure(report, questionnaire, intervals), paths[1])
    MlflowClient().log_text(
        run_id, intervals.to_csv(index=False), "evaluation/trait_shift_intervals.csv"
    )
    return paths


TOP_SHIFTS = 6
"""Traits per model in the summary's shift table (the plot shows them all)."""


def _trait_shift_table(
    report: EvaluationReport, intervals: pd.DataFrame, texts: Mapping[str, str]
) -> list[str]:
    """The largest shifts of each model at its reported epoch, with their CIs."""
    title = (
        f"## Largest trait shifts at the reported epoch ({report.confidence:.0%} CI, "
        "paired by persona)"
    )
    rows = []
    chosen = at_epochs(intervals, report.best_epoch)
    for model, part in chosen.groupby(MODEL_COLUMN, sort=True):
        top = part.reindex(part["shift"].abs().sort_values(ascending=False).index).head(TOP_SHIFTS)
        rows += [
            [
                model,
                f"{int(row.epoch):02d}",
                row.trait_id,
                texts.get(row.trait_id, ""),
                number(row.shift, "+.2f"),
                f"[{number(row.ci_low, '+.2f')}, {number(row.ci_high, '+.2f')}]",
                int(row.n_pairs),
            ]
            for row in top.itertuples(index=False)
        ]
    if not rows:
        return [title, "", "No trained epoch is reported: nothing to compare with the base."]
    header = ["model", "epoch", "trait", "statement", "shift", "CI", "personas"]
    return [title, "", *markdown.table(header, rows)]


def _markdown_summary(
    report: EvaluationReport,
    run_id: str,
    plots: Sequence[str],
    failures: Sequence[dict],
    *,
    by_id: EvaluationReport | None = None,
    explanation: str = "",
    second: EvaluationReport | None = None,
    guards: GuardReport | None = None,
    decision: PromotionDecision | None = None,
    registered: str | None = None,
    notes: Sequence[str] = (),
    intervals: pd.DataFrame | None = None,
    trait_texts: Mapping[str, str] | None = None,
) -> str:
    """The evaluation summary as markdown: headings, and tables whose numbers are rounded."""
    lines = [
        "# HAL evaluation",
        "",
        f"MLflow run `{run_id}`; plots: {', '.join(f'`{p}`' for p in plots)}.",
        "",
        f"Rating failures: {len(failures)}.",
        "",
    ]
    if notes:
        lines += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    lines += ["## HL gain at the reported epoch", ""]
    header = "| model | epoch | HL gain | base mean | epoch mean | one-sided paired t (p) |"
    extra = (" paper-compatible gain | by-id gain |" if by_id else "") + (
        " second judge gain |" if second else ""
    )
    columns = (header + extra).count("|") - 1
    lines += [header + extra, "|---" * columns + "|"]
    table = report.summary.set_index([MODEL_COLUMN, EPOCH_COLUMN])
    for model, epoch in sorted(report.best_epoch.items()):
        best, base = table.loc[(model, epoch)], table.loc[(model, report.base_epoch)]
        row = (
            f"| {model} | {epoch:02d} | {number(best['gain'], '+.3f')} | {base['mean']:.3f} | "
            f"{best['mean']:.3f} | {number(best['t'], '.2f')} ({number(best['p'], '.2g')}) |"
        )
        if by_id:
            row += (
                f" {number(best['gain'], '+.3f')} | "
                f"{number(by_id.value(model, epoch, 'gain'), '+.3f')} |"
            )
        if second:
            row += f" {number(second.value(model, epoch, 'gain'), '+.3f')} |"
        lines.append(row)
    if explanation:
        lines += ["", explanation]
    if guards is not None:
        lines += [
            "",
            "## HL per epoch",
            "",
            "| epoch | personas | mean HL (CI) | gain | p |"
            + (" second judge gain |" if second else ""),
            "|---|---|---|---|---|" + ("---|" if second else ""),
        ]
        for row in report.summary.itertuples(index=False):
            line = (
                f"| {row.epoch:02d} | {row.n} | {row.mean:.3f} ({number(row.ci_low, '.3f')}, "
                f"{number(row.ci_high, '.3f')}) | {number(row.gain, '+.3f')} | "
                f"{number(row.p, '.2g')} |"
            )
            if second:
                line += f" {number(second.value(row.model, row.epoch, 'gain'), '+.3f')} |"
            lines.append(line)
        lines += [
            "",
            f"## Guards (epoch {guards.epoch:02d} vs {guards.base_epoch:02d})",
            "",
            "| guard | value | limit | passed | note |",
            "|---|---|---|---|---|",
        ]
        for check in guards.checks:
            lines.append(
                f"| {check.name} | {number(check.value, '.4g')} | {check.rule} "
                f"{check.threshold:g} | {'yes' if check.passed else '**no**'} | {check.note} |"
            )
    if decision is not None:
        verdict = "promote" if decision.promote else "refuse"
        lines += ["", f"## Decision: **{verdict}**" + (f" ({registered})" if registered else "")]
        lines += ["", *[f"- {reason}" for reason in decision.reasons]]
    if intervals is not None:
        lines += ["", *_trait_shift_table(report, intervals, trait_texts or {})]
    return "\n".join(lines) + "\n"


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def publish_evaluation(
    report: EvaluationReport,
    run_id: str,
    plots: Sequence[str],
    failures: Sequence[dict],
    *,
    by_id: EvaluationReport | None = None,
    explanation: str = "",
    second: EvaluationReport | None = None,
    guards: GuardReport | None = None,
    decision: PromotionDecision | None = None,
    registered: str | None = None,
    notes: Sequence[str] = (),
    intervals: pd.DataFrame | None = None,
    trait_texts: Mapping[str, str] | None = None,
) -> None:
    """Publish the evaluation summary (gains, tests, the paper-compatible and by-id scores, the
    second judge, guards, the promotion decision and the trait shifts with CIs) as
    ``evaluation/summary.md`` and a Prefect markdown artifact, and the per-epoch table as a
    Prefect table artifact."""
    summary = _markdown_summary(
        report,
        run_id,
        plots,
        failures,
        by_id=by_id,
        explanation=explanation,
        second=second,
        guards=guards,
        decision=decision,
        registered=registered,
        notes=notes,
        intervals=intervals,
        trait_texts=trait_texts,
    )
    publish_markdown.fn(
        run_id,
        summary,
        "evaluation/summary.md",
        "evaluation-summary",
        "HL gain, paired t-tests, second judge, guards, promotion and trait shifts.",
    )
    table = report.summary.round(6).astype(object).where(report.summary.notna(), None)
    create_table_artifact(
        table.to_dict(orient="records"),
        key="evaluation-epochs",
        description="HL score per model and epoch: mean, std, CI, gain over base, t-test.",
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
            (_key(row.model, "hl.stored_mean", True), row.stored_mean, row.epoch)
            for row in check.itertuples(index=False)
        ],
    )
    log_metrics(run_id, {"hl.stored_max_abs_diff": float(check["max_abs_diff"].max())})
