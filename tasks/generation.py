"""Tasks of the generate stage: read personas and the doctor script, fingerprint the policy,
generate through the cache, log."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from hal_core.dialogue_generation import (
    GenerationJob,
    GenerationSpec,
    GenerationStats,
    degenerate_counts,
    run_generation,
)
from hal_core.doctor_script import DoctorScript
from hal_core.generation import load_policy, policy_fingerprint
from hal_core.generation_cache import GeneratedDialogue, GenerationCache
from hal_core.personas import MAX_PROMPT_CHARS, PersonaPrompt, load_persona_prompts
from tasks import tracking
from tasks.rating import progress_bar
from tasks.retries import retry_unless_bad_input

_EPOCH_FOLDER = re.compile(r"epoch[-_]?(\d+)$")


class GenerationRun(BaseModel):
    """The dialogues of every job (in job order) and what the run did."""

    dialogues: list[GeneratedDialogue]
    stats: GenerationStats


@task(
    name="read_personas",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_unless_bad_input,
)
def read_personas(
    path: Path,
    limit: int | None = None,
    persona_ids: list[str] | None = None,
    max_chars: int = MAX_PROMPT_CHARS,
) -> list[PersonaPrompt]:
    """The persona prompts to generate for (the first ``limit``, or the named ids)."""
    return load_persona_prompts(path, limit, persona_ids, max_chars)


@task(name="read_doctor_script", cache_policy=NO_CACHE)
def read_doctor_script(path: Path) -> DoctorScript:
    """A doctor script YAML, validated."""
    return DoctorScript.load(path)


def checkpoint_epoch(adapter: str | Path) -> int | None:
    """The epoch of a training checkpoint: its ``trainer_state.json`` (rounded), else a folder
    name like ``epoch-2``; None when neither says."""
    folder = Path(adapter)
    state = folder / "trainer_state.json"
    if state.is_file():
        epoch = json.loads(state.read_text()).get("epoch")
        if epoch is not None:
            return round(float(epoch))
    match = _EPOCH_FOLDER.search(folder.name)
    return int(match.group(1)) if match else None


@task(name="fingerprint_policy", cache_policy=NO_CACHE)
def fingerprint_policy(model_path: str, adapter: str | None, cache_path: Path) -> str:
    """The policy's fingerprint (model files + adapter files), large files hashed once."""
    with GenerationCache(cache_path) as cache:
        return policy_fingerprint(model_path, adapter, cache.file_digest)


@task(name="generate_dialogues", cache_policy=NO_CACHE)
def generate_dialogues(
    model_path: str,
    adapter: str | None,
    jobs: list[GenerationJob],
    spec: GenerationSpec,
    script: DoctorScript | None,
    fingerprint: str,
    cache_path: Path,
    progress: bool = False,
) -> GenerationRun:
    """Every job's dialogue: cached ones read back, the rest generated in batches and each
    committed to the cache as it finishes (the model is loaded only when something is
    missing)."""
    logger = get_run_logger()
    with GenerationCache(cache_path) as cache:
        missing = len(jobs) - len(cache.get_many(job.key for job in jobs))
        model = tokenizer = None
        if missing:
            logger.info("loading %s%s", model_path, f" + {adapter}" if adapter else "")
            model, tokenizer = load_policy(model_path, adapter, spec.dtype)
        with progress_bar(progress, desc="generating") as on_progress:
            dialogues, stats = run_generation(
                model, tokenizer, jobs, spec, cache, fingerprint, script, on_progress
            )
    logger.info(
        "%d dialogues: %d cached, %d generated (%.1f tokens/s, %.1f dialogues/min)",
        stats.dialogues,
        stats.cached,
        stats.generated,
        stats.tokens_per_second,
        stats.dialogues_per_minute,
    )
    return GenerationRun(dialogues=dialogues, stats=stats)


def generation_metrics(table: pd.DataFrame, stats: GenerationStats) -> dict[str, float]:
    """The stage's metrics: counts, speed, degenerate fractions by reason, patient length."""
    n = max(len(table), 1)
    counts = degenerate_counts(table)
    turns = table["n_turns"].clip(lower=1)
    metrics = {
        "generation.dialogues": len(table),
        "generation.generated": stats.generated,
        "generation.cached": stats.cached,
        "generation.new_tokens": stats.new_tokens,
        "generation.seconds": stats.seconds,
        "generation.tokens_per_second": stats.tokens_per_second,
        "generation.dialogues_per_minute": stats.dialogues_per_minute,
        "generation.degenerate_fraction": float((table["degenerate"].fillna("") != "").mean())
        if len(table)
        else 0.0,
        **{f"generation.degenerate.{reason}": count / n for reason, count in counts.items()},
        "generation.patient_words_per_turn.mean": float((table["patient_words"] / turns).mean())
        if len(table)
        else 0.0,
    }
    return {key: float(value) for key, value in metrics.items()}


@task(name="log_generation", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def log_generation(
    run_id: str, metrics: dict[str, float], output_path: Path, details: dict[str, str]
) -> None:
    """Metrics, the policy/script/input details as params, and the table as an artifact."""
    tracking.log_params(run_id, details)
    tracking.log_metrics(run_id, metrics)
    tracking.log_file(run_id, output_path, "generations")
