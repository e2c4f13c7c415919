"""Tasks of the rating stage: read dialogues, rate them through judge + cache, save, log.

The helpers every judge-backed stage shares (API key, progress bar and plan log, the run's
outcome line, metrics with cost, the summary line) live here once; statement collection
(tasks/statements.py) uses them too."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from hal_core.dialogue import SpeakerTags
from hal_core.domain import out_of_domain_fraction
from hal_core.judges import JudgeConfig, build_judge, rate_cached
from hal_core.judges.config import API_KEY_ENV, OpenAIJudgeConfig
from hal_core.judges.runner import JudgeRun, RatingRun, RetryPolicy, RunPlan
from hal_core.judging import JudgeConfigurationError, JudgeRunStats
from hal_core.questionnaire import Questionnaire
from hal_core.rating_cache import RatingCache
from hal_core.scoring import ERROR_COLUMN, ID_COLUMN, KIND_COLUMN, RATED_STATUS, STATUS_COLUMN
from hal_core.tables import ROW_COLUMN, TableError, read_table, write_table
from tasks import tracking


def resolve_api_key(config: JudgeConfig) -> str | None:
    """The judge's API key from its Prefect Secret block or the environment; never logged."""
    if not isinstance(config, OpenAIJudgeConfig):
        return None
    if config.api_key_secret_block:
        from prefect.blocks.system import Secret

        value = Secret.load(config.api_key_secret_block).get()
        return str(value) if value else None
    for name in (API_KEY_ENV, config.api_key_env):
        value = os.environ.get(name)
        if value:
            return value
    return None


@task(name="read_questionnaire", cache_policy=NO_CACHE)
def read_questionnaire(path: Path) -> Questionnaire:
    """Read a questionnaire JSON: the project's, or the published HAL16Q statements under their
    HAL32Q ids (what the doctor's-visit local judge rates on)."""
    return Questionnaire.load(path)


@task(name="read_dialogues", cache_policy=NO_CACHE)
def read_dialogues(
    path: Path, text_column: str, id_column: str | None, limit: int | None = None
) -> pd.DataFrame:
    """Read the dialogues to rate: one per row, with a unique ``item_id``."""
    table = read_table(path)
    if text_column not in table.columns:
        raise TableError(
            f"{path}: no column {text_column!r} (rule: the dialogue column must exist); "
            f"columns: {[c for c in table.columns if c != ROW_COLUMN]}"
        )
    if limit is not None:
        table = table.head(limit).copy()
    if id_column is None:
        ids = table[ROW_COLUMN].astype(str)
    elif id_column not in table.columns:
        raise TableError(f"{path}: no id column {id_column!r} (rule: the id column must exist)")
    else:
        ids = table[id_column].astype(str)
        repeated = table.loc[ids.duplicated(keep=False), ROW_COLUMN].tolist()
        if repeated:
            raise TableError(
                f"{path} rows {repeated[:10]}: {id_column} repeats (rule: item ids are unique)"
            )
    table.insert(0, ID_COLUMN, ids.to_numpy())
    table[text_column] = table[text_column].fillna("").astype(str)
    return table


def limit_suffix(limit: int | None) -> str:
    """Part of a default output name: a run over the first N rows never overwrites the full
    run's file."""
    return f"-first{limit}" if limit else ""


def retry_unless_misconfigured(task, task_run, state) -> bool:
    """Prefect retry condition: a wrong key, model or endpoint fails the same way again."""
    return not isinstance(getattr(state, "data", None), JudgeConfigurationError)


JUDGE_TASK: dict[str, Any] = {
    "cache_policy": NO_CACHE,
    "retries": 1,
    "retry_delay_seconds": 10,
    "retry_condition_fn": retry_unless_misconfigured,
}
"""Options of a task that asks a judge: one retry after a crash (the cache keeps what was
answered), none after a wrong key, model or endpoint."""


@contextmanager
def progress_bar(
    enabled: bool, unit: str = "dialogue", desc: str = "rating"
) -> Iterator[Callable[[int, int], None] | None]:
    """``on_progress(done, total)`` drawing a bar on stderr, or None when disabled."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=0, unit=unit, desc=desc, dynamic_ncols=True)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
            bar.refresh()
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()


@contextmanager
def judge_run_hooks(
    progress: bool, unit: str = "dialogue", desc: str = "rating"
) -> Iterator[dict[str, Any]]:
    """``on_progress`` (a bar when asked) and ``on_plan`` (logs what will be asked and its
    estimated tokens and cost, before the first request) for a run through a judge."""
    logger = get_run_logger()

    def on_plan(plan: RunPlan) -> None:
        logger.info("%s", plan.describe())

    with progress_bar(progress, unit=unit, desc=desc) as on_progress:
        yield {"on_progress": on_progress, "on_plan": on_plan}


def log_run_outcome(run: JudgeRun, answered: str) -> None:
    """One log line of what a run through a judge did (``answered``: "rated", "proposed")."""
    stats = run.stats
    get_run_logger().info(
        "%s %d, failed %d, cache hits %d, requested %d, waited for another run %d (judge %s)",
        answered,
        stats.answered,
        stats.failed,
        stats.cache_hits,
        stats.requested,
        stats.claimed_elsewhere,
        run.fingerprint,
    )


@task(name="rate_with_judge", **JUDGE_TASK)
def rate_with_judge(
    dialogues: list[str],
    questionnaire: Questionnaire,
    tags: SpeakerTags,
    judge_config: JudgeConfig,
    cache_path: Path,
    retry_failures: RetryPolicy = "transient",
    data_dir: Path | None = None,
    progress: bool = False,
) -> RatingRun:
    """Rate dialogues through the cache, committing each result as it arrives."""
    judge = build_judge(judge_config, api_key=resolve_api_key(judge_config), data_dir=data_dir)
    with RatingCache(cache_path) as cache, judge_run_hooks(progress) as hooks:
        run = rate_cached(
            judge, dialogues, questionnaire, tags, cache, retry_failures=retry_failures, **hooks
        )
    log_run_outcome(run, "rated")
    return run


@task(name="save_table", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def save_table(table: pd.DataFrame, path: Path) -> Path:
    """Write a table as UTF-8 CSV, atomically, formula cells neutralized."""
    write_table(table, path)
    return path


def judge_run_metrics(stats: JudgeRunStats, judge_config: JudgeConfig) -> dict[str, float]:
    """Failures, cache hits, requests, tokens, latency and the estimated cost of the tokens
    an API judge used: the metrics every judge-backed stage logs."""
    cost = (
        judge_config.estimated_cost(stats.prompt_tokens, stats.completion_tokens)
        if isinstance(judge_config, OpenAIJudgeConfig)
        else 0.0
    )
    return {**stats.usage_metrics(), "estimated_cost_usd": cost}


def rating_metrics(run: RatingRun, judge_config: JudgeConfig) -> dict[str, float]:
    """The stage's metrics: counts, tokens, latency quantiles and estimated cost."""
    stats = run.stats
    metrics = {
        "items": stats.items,
        "unique_dialogues": stats.unique,
        "rated": stats.rated,
        **judge_run_metrics(stats, judge_config),
    }
    return {key: float(value) for key, value in metrics.items() if not np.isnan(value)}


def out_of_domain_metrics(run: RatingRun) -> dict[str, float]:
    """``ood_fraction``: the share of input rows the judge called out of its domain, over the
    rows where it said either way (:mod:`hal_core.domain`); empty when the judge has no such
    signal (an API judge), so no metric pretends it has one."""
    results = [run.result_for_row(row) for row in range(len(run.keys))]
    fraction = out_of_domain_fraction(results)
    return {"ood_fraction": fraction} if np.isfinite(fraction) else {}


def judge_params(judge_config: JudgeConfig, fingerprint: str) -> dict[str, str]:
    """MLflow params of a judge: its settings (no key: configs hold only where to find one)
    and its fingerprint."""
    config = judge_config.model_dump(mode="json")
    params = {
        f"judge.{key}": param_text(value) for key, value in config.items() if value is not None
    }
    params["judge.fingerprint"] = fingerprint
    return params


def param_text(value: object, limit: int = 1000) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@task(name="log_rating_run", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def log_rating_run(
    run_id: str,
    run: RatingRun,
    judge_config: JudgeConfig,
    questionnaire: Questionnaire,
    tags: SpeakerTags,
    table_path: Path,
    input_hashes: dict[str, str],
    retry_failures: str,
) -> dict[str, float]:
    """Log judge params, rating metrics (with the out-of-domain share when the judge reports
    one), the ratings table and a summary to MLflow."""
    config = judge_config.model_dump(mode="json")
    params = judge_params(judge_config, run.fingerprint)
    params.update(
        {
            "questionnaire.name": questionnaire.name,
            "questionnaire.version": questionnaire.version,
            "speakers.rated": " ".join(tags.rated),
            "speakers.others": " ".join(tags.others),
            "retry_failures": retry_failures,
        }
    )
    tracking.log_params(run_id, params)
    metrics = rating_metrics(run, judge_config) | out_of_domain_metrics(run)
    tracking.log_metrics(run_id, metrics)
    tracking.log_file(run_id, table_path, "tables")
    table = pd.read_csv(table_path)
    failures = table.loc[
        table[STATUS_COLUMN] != RATED_STATUS, [ID_COLUMN, KIND_COLUMN, ERROR_COLUMN]
    ]
    tracking.log_json(
        run_id,
        {
            "inputs": input_hashes,
            "judge": {"fingerprint": run.fingerprint, "config": config},
            "questionnaire": {"name": questionnaire.name, "version": questionnaire.version},
            "metrics": metrics,
            "failures": failures.to_dict(orient="records"),
        },
        "rating_summary.json",
    )
    return metrics


SUMMARY_KEYS = (
    "rated",
    "proposed",
    "failures",
    "cache_hits",
    "claimed_elsewhere",
    "requests",
    "tokens",
    "estimated_cost_usd",
    "statements",
    "verdict_accuracy",
    "latency_p50_s",
    "ood_fraction",
)


def summary_line(metrics: dict[str, float]) -> str:
    """The metrics a person reads first after a judge-backed stage, as one JSON line."""
    return json.dumps({key: metrics[key] for key in SUMMARY_KEYS if key in metrics})
