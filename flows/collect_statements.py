"""Flow ``collect_statements``: Turing games + judge config -> a statements table for
``derive_traits`` (games columns + ``aijudge_verdict``, ``human_characteristics``,
``elapsed_time``).

A judge reads both conversations of each game, says which witness was human and what gave the
human away. Answers are committed to the SQLite cache as they arrive (after every chunk of
games for judges that cannot stream), so a killed run, started again, asks only for what is
missing; failed games are left out of the table and listed with their reasons::

    hal collect-statements --model gpt-5 --concurrency 32
    hal collect-statements --judge judge.yaml --limit 50          # judge.yaml: a JudgeConfig
    hal collect-statements --backend openai --base-url http://localhost:8000/v1 --model llama
    hal derive-traits --statements-file "$HAL_HOME/statements/games-<fingerprint12>.csv"
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from prefect import flow
from pydantic import BaseModel, ConfigDict, Field

from hal_core.dialogue import SpeakerTags
from hal_core.forms import Internal, RunForm
from hal_core.judges import JudgeConfig, OpenAIJudgeConfig
from hal_core.judging import JudgeError
from hal_core.settings import get_settings
from hal_core.statements import games_from_table, statements_table
from hal_core.tables import ROW_COLUMN
from tasks import tracking
from tasks.rating import limit_suffix, save_table, summary_line
from tasks.statements import log_statement_run, propose_with_judge, read_games
from tasks.validation import Policy, validate_dataset

GAMES_CONTRACT = "turing_games"
STATEMENTS_CONTRACT = "statements"


class CollectStatementsParams(RunForm):
    """Parameters of statement collection (the Prefect UI renders them as a form). Stored by
    Prefect as the flow run's parameters: the judge config refuses secrets, so none is kept."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    games_file: str = Field(
        default="turing/games.csv",
        description="Games table (game_id, conversation_A/B_transcript, labels, who_is_human); "
        "relative paths are looked up here first, then in the data folder.",
    )
    judge: JudgeConfig = Field(
        default_factory=OpenAIJudgeConfig,
        description="Which judge reads the games (by backend: openai, hf or recorded).",
    )
    speaker_tags: SpeakerTags = Field(
        default_factory=SpeakerTags.turing,
        description="Line tags of the witness (rated) and the interrogator (other).",
    )
    output_file: str | None = Field(
        default=None,
        description="Statements CSV; None = HAL_HOME/statements/GAMES[-firstLIMIT]-JUDGE.csv.",
    )
    cache_file: str | None = Field(
        default=None, description="SQLite cache; None = HAL_HOME/cache/ratings.sqlite."
    )
    limit: int | None = Field(default=None, ge=1, description="Use only the first N games.")
    retry_failures: Literal["none", "transient", "all"] = Field(
        default="transient", description="Which failures stored by earlier runs are asked again."
    )
    chunk_size: int = Field(
        default=32,
        ge=1,
        description="Games per request batch of a judge that cannot stream (hf, recorded): "
        "committed together, so a killed run loses at most one chunk.",
    )
    validation_policy: Policy = Field(
        default="fail",
        description="Stop on games that break the games contract, or quarantine them and go on.",
    )
    progress: bool = Field(default=False, description="Show a progress bar on stderr.")
    parent_run_id: Internal[tracking.ParentRunId] = None
    run_name: Internal[tracking.RunName] = None


class CollectStatementsResult(BaseModel):
    """What statement collection produced, for derive_traits to read."""

    run_id: str = Field(description="MLflow run of this stage.")
    output_file: str = Field(description="Statements CSV, in the format derive_traits reads.")
    judge_fingerprint: str = Field(description="Hash of the judge's answer-changing settings.")
    prompt_version: str = Field(description="Version of the statement prompt.")
    failures: list[dict] = Field(description="game_id, error_kind, error per game left out.")
    metrics: dict[str, float] = Field(description="Counts, tokens, cost, verdict accuracy.")


def _as_read(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """``table`` as ``read_table(path)`` will give it back (row numbers, source)."""
    framed = table.copy()
    framed.insert(0, ROW_COLUMN, np.arange(1, len(table) + 1))
    framed.attrs["source"] = str(path)
    return framed


@flow(name="collect_statements", log_prints=True)
def collect_statements(
    params: CollectStatementsParams = CollectStatementsParams(),  # noqa: B008 - never mutated
) -> CollectStatementsResult:
    """Ask a judge what gave the human away in every game; write a statements table."""
    settings = get_settings()
    games_path = settings.input_path(params.games_file)
    cache_path = Path(params.cache_file or settings.home_dir / "cache" / "ratings.sqlite")
    tags = params.speaker_tags
    with tracking.stage_run(
        "collect_statements",
        settings.experiment_traits,
        settings,
        params.parent_run_id,
        run_name=params.run_name,
    ) as run:
        run_id = run.info.run_id
        hashes = tracking.log_inputs(run_id, {"games": games_path})
        table = read_games(games_path, params.limit)
        report = validate_dataset(table, GAMES_CONTRACT, params.validation_policy, settings, run_id)
        games = report.valid
        proposals = propose_with_judge(
            games_from_table(games),
            tags,
            params.judge,
            cache_path,
            params.retry_failures,
            settings.data_dir,
            params.chunk_size,
            params.progress,
        )
        statements, failures = statements_table(games, proposals)
        output_path = Path(
            params.output_file
            or settings.home_dir
            / "statements"
            / f"{games_path.stem}{limit_suffix(params.limit)}-{proposals.fingerprint[:12]}.csv"
        )
        # what derive_traits will read must pass its contract before it is written (an empty
        # table is reported below, with the judge's reasons)
        validate_dataset(
            _as_read(statements, output_path), STATEMENTS_CONTRACT, "fail", settings, run_id, 0
        )
        save_table(statements, output_path)
        metrics = log_statement_run(
            run_id,
            proposals,
            games,
            failures,
            params.judge,
            tags,
            output_path,
            hashes,
            {
                "games_file": params.games_file,
                "limit": params.limit,
                "retry_failures": params.retry_failures,
                "chunk_size": params.chunk_size,
                "validation_policy": params.validation_policy,
            },
        )
        print(f"statements: {output_path} {summary_line(metrics)}")
        if statements.empty:
            reasons = "; ".join(
                f"{f['game_id']}: {f['error']}" for f in failures.head(3).to_dict("records")
            )
            raise JudgeError(
                f"{games_path}: the judge proposed statements for none of {len(games)} games "
                f"(failures logged to MLflow run {run_id}; first: {reasons})"
            )
    return CollectStatementsResult(
        run_id=run_id,
        output_file=str(output_path),
        judge_fingerprint=proposals.fingerprint,
        prompt_version=proposals.prompt_version,
        failures=failures.to_dict(orient="records"),
        metrics=metrics,
    )
