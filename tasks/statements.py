"""Tasks of statement collection: read games, propose statements through judge + cache, save,
log."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from hal_core.dialogue import SpeakerTags
from hal_core.judges import JudgeConfig, build_judge
from hal_core.judges.runner import RetryPolicy
from hal_core.judging import Game, JudgeConfigurationError, StatementProposer
from hal_core.rating_cache import ProposalCache
from hal_core.statements import ProposalRun, proposal_metrics, propose_cached
from hal_core.tables import file_sha256, read_table
from tasks import tracking
from tasks.rating import (
    JUDGE_TASK,
    judge_params,
    judge_run_hooks,
    judge_run_metrics,
    log_run_outcome,
    param_text,
    resolve_api_key,
)
from tasks.retries import retry_unless_bad_input


@task(
    name="read_games",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_unless_bad_input,
)
def read_games(path: Path, limit: int | None = None) -> pd.DataFrame:
    """Read a games table (the first ``limit`` rows) with row numbers for error messages."""
    table = read_table(path)
    if limit is not None:
        table = table.head(limit).copy()
        table.attrs["source"] = str(path)
    return table


@task(name="propose_with_judge", **JUDGE_TASK)
def propose_with_judge(
    games: list[Game],
    tags: SpeakerTags,
    judge_config: JudgeConfig,
    cache_path: Path,
    retry_failures: RetryPolicy = "transient",
    data_dir: Path | None = None,
    chunk_size: int = 32,
    progress: bool = False,
) -> ProposalRun:
    """Ask the judge for every game's statements through the cache, committing each answer
    as it arrives (per chunk for judges that cannot stream)."""
    judge = build_judge(judge_config, api_key=resolve_api_key(judge_config), data_dir=data_dir)
    if not isinstance(judge, StatementProposer):
        raise JudgeConfigurationError(
            f"backend {judge_config.backend!r} cannot propose statements "
            "(it has no propose_statements)"
        )
    with (
        ProposalCache(cache_path) as cache,
        judge_run_hooks(progress, unit="game", desc="proposing") as hooks,
    ):
        run = propose_cached(
            judge, games, tags, cache, chunk_size=chunk_size, retry_failures=retry_failures, **hooks
        )
    log_run_outcome(run, "proposed")
    return run


def statement_metrics(
    run: ProposalRun, games: pd.DataFrame, judge_config: JudgeConfig
) -> dict[str, float]:
    """The stage's metrics, with the estimated cost of an API judge."""
    cost = judge_run_metrics(run.stats, judge_config)["estimated_cost_usd"]
    return proposal_metrics(run, games) | {"estimated_cost_usd": cost}


@task(name="log_statement_run", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def log_statement_run(
    run_id: str,
    run: ProposalRun,
    games: pd.DataFrame,
    failures: pd.DataFrame,
    judge_config: JudgeConfig,
    tags: SpeakerTags,
    table_path: Path,
    input_hashes: dict[str, str],
    run_params: dict[str, object],
) -> dict[str, float]:
    """Log judge params, metrics, the statements table, the failures and a summary to MLflow."""
    config = judge_config.model_dump(mode="json")
    params = judge_params(judge_config, run.fingerprint)
    params.update(
        {
            "prompt_version": run.prompt_version,
            "speakers.rated": " ".join(tags.rated),
            "speakers.others": " ".join(tags.others),
            **{key: param_text(value) for key, value in run_params.items()},
        }
    )
    tracking.log_params(run_id, params)
    metrics = statement_metrics(run, games, judge_config)
    tracking.log_metrics(run_id, metrics)
    tracking.log_file(run_id, table_path, "tables")
    records = failures.to_dict(orient="records")
    tracking.log_json(run_id, records, "failures.json")
    tracking.log_json(
        run_id,
        {
            "inputs": input_hashes,
            "output": {"path": str(table_path), "sha256": file_sha256(table_path)},
            "judge": {"fingerprint": run.fingerprint, "config": config},
            "prompt_version": run.prompt_version,
            "metrics": metrics,
            "failures": records,
        },
        "statements_summary.json",
    )
    return metrics
