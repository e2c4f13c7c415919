"""Prefect tasks of the alignment stage: candidates, preference pairs, and DPO training.

Training runs in its own processes, started with ``accelerate launch`` on
``scripts/train_dpo.py``; it is never imported here. Its output is streamed to the Prefect
logger and to a log file, and a failed run fails the task with the tail of that log.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import psutil
import yaml
from mlflow.entities import DatasetInput, InputTag
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from hal_core import dpo_recipe, preferences
from hal_core.generation import load_candidates
from hal_core.policy_model import resolve_policy_model
from hal_core.preferences import PairingConfig, PreferencePairs
from hal_core.scoring import ID_COLUMN
from hal_core.settings import PROJECT_ROOT, HalSettings
from hal_core.tables import ROW_COLUMN, read_table, write_table
from hal_core.tiny_model import TINY_MODEL_NAME, synthlabs_corpus
from hal_core.training import PARENT_RUN_ENV, TRAIN_SCRIPT, complete_checkpoints, recorded_run_id
from tasks import tracking

TAIL_LINES = 60


class TrainingFailedError(RuntimeError):
    """The training process failed; the message carries the end of its log."""


class RecipeRejectedError(ValueError):
    """The recipe failed its check before launch; the message names the key."""


class PairsArtifact(BaseModel):
    """Preference pairs saved on disk: the DatasetDict folder, the flat table, their stats."""

    model_config = ConfigDict(frozen=True)

    dataset_path: str
    table_path: str
    excluded_path: str
    stats_path: str
    sha256: str = Field(description="Hash of the pairs table (train/test marked).")
    stats: dict[str, Any]


class TrainingLaunch(BaseModel):
    """Everything one ``accelerate launch`` of the training script needs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    recipe_file: str
    overrides: dict[str, Any] = Field(default_factory=dict)
    accelerate_config: str = "zero2"
    num_processes: int = 1
    output_dir: str
    log_file: str
    parent_run_id: str | None = None
    fresh_start: bool = False


class EpochCheckpoint(BaseModel):
    """A checkpoint saved at the end of an epoch: a LoRA adapter folder."""

    epoch: int
    step: int
    path: str


class TrainingOutcome(BaseModel):
    """Where training wrote its results, its epoch checkpoints and the MLflow run holding them."""

    output_dir: str
    log_file: str
    run_id: str | None
    command: str
    checkpoints: list[EpochCheckpoint] = Field(
        default_factory=list, description="Checkpoints that end an epoch, oldest first."
    )


# -- candidates and scores ---------------------------------------------------------------------


@task(name="read_candidates", cache_policy=NO_CACHE)
def read_candidates(candidates_file: str, prompts_file: str, settings: HalSettings) -> pd.DataFrame:
    """The candidates table (prompt_id, prompt, candidate_id, response, model) from files."""
    return load_candidates(settings.input_path(candidates_file), settings.input_path(prompts_file))


@task(name="read_scores", cache_policy=NO_CACHE)
def read_scores(scores_file: str, settings: HalSettings) -> pd.DataFrame:
    """A precomputed scores table (a candidate id and an HL score per row)."""
    return read_table(settings.input_path(scores_file))


@task(name="read_ratings_table", cache_policy=NO_CACHE)
def read_ratings_table(ratings_file: str, settings: HalSettings) -> pd.DataFrame:
    """A ratings table (rate_dialogues output) indexed by its ``item_id`` as text."""
    path = settings.input_path(ratings_file)
    table = read_table(path)
    if ID_COLUMN not in table.columns:
        raise ValueError(f"{path}: missing column {ID_COLUMN!r} (rule: a rate_dialogues output)")
    duplicated = table[ID_COLUMN].astype(str).duplicated()
    if duplicated.any():
        first = table.index[duplicated][0]
        raise ValueError(
            f"{path} row {table.at[first, ROW_COLUMN]}: {ID_COLUMN} "
            f"{table.at[first, ID_COLUMN]!r} is not unique"
        )
    indexed = table.set_index(table[ID_COLUMN].astype(str))
    indexed.attrs["source"] = str(path)
    return indexed


@task(name="score_candidates", cache_policy=NO_CACHE)
def score_candidates(
    candidates: pd.DataFrame,
    scorer: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    scores: pd.DataFrame | None = None,
    id_column: str = "candidate_id",
    score_column: str = "hl",
) -> pd.DataFrame:
    """Candidates with an ``hl`` score each (NaN + ``score_error`` when none could be had)."""
    if scores is not None:
        return preferences.attach_scores(candidates, scores, id_column, score_column)
    if scorer is None:
        raise ValueError("score_candidates needs a scorer or a scores table")
    scored = candidates.copy()
    result = scorer(candidates)
    scored["hl"] = result["hl"].to_numpy(float)
    for column in result.columns.drop("hl"):
        scored[column] = result[column].to_numpy(object)
    return scored


# -- preference pairs --------------------------------------------------------------------------


@task(name="build_preference_pairs", cache_policy=NO_CACHE)
def build_preference_pairs(scored: pd.DataFrame, config: PairingConfig) -> PreferencePairs:
    """Same-prompt pairs whose HL scores differ by more than k·σ (the config's other rules)."""
    return preferences.build_pairs(
        scored,
        k=config.k,
        max_pairs_per_prompt=config.max_pairs_per_prompt,
        drop_both_out_of_domain=config.drop_both_out_of_domain,
    )


@task(name="validate_preference_pairs", cache_policy=NO_CACHE)
def validate_preference_pairs(
    pairs: PreferencePairs, policy: str, settings: HalSettings, run_id: str | None
) -> PreferencePairs:
    """The pairs that pass the ``preferences`` data contract (GX), when that contract exists."""
    try:
        from tasks.validation import validate_dataset
    except ImportError:
        get_run_logger().warning("tasks.validation is not available: pairs not validated")
        return pairs
    frame = pairs.pairs.copy()
    frame.insert(0, ROW_COLUMN, np.arange(1, len(frame) + 1))
    frame.attrs["source"] = "preference_pairs"
    report = validate_dataset.fn(frame, "preferences", policy, settings, run_id)
    valid = report.valid.drop(columns=[ROW_COLUMN])
    quarantined = report.quarantined
    excluded = pairs.excluded
    if len(quarantined):
        get_run_logger().warning(
            "%d pairs quarantined by the preferences contract", len(quarantined)
        )
    return PreferencePairs(
        pairs=valid.reset_index(drop=True),
        sigma=pairs.sigma,
        threshold=pairs.threshold,
        n_candidates=pairs.n_candidates,
        n_prompts=pairs.n_prompts,
        excluded=excluded,
    )


def _frame_sha(frame: pd.DataFrame) -> str:
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


@task(name="save_preference_pairs", cache_policy=NO_CACHE)
def save_preference_pairs(
    pairs: PreferencePairs, config: PairingConfig, settings: HalSettings
) -> PairsArtifact:
    """Write the DatasetDict (train/test by prompt), the flat table, exclusions and stats."""
    splits = preferences.split_by_prompt(pairs.pairs, config.test_fraction, config.seed)
    table = pd.concat(
        [frame.assign(split=name) for name, frame in splits.items()], ignore_index=True
    )
    sha = _frame_sha(table)
    folder = settings.home_dir / "preferences" / f"pairs-{sha[:12]}"
    folder.mkdir(parents=True, exist_ok=True)
    dataset_path = folder / "dataset"
    if not (dataset_path / "dataset_dict.json").is_file():
        preferences.to_dataset_dict(splits).save_to_disk(str(dataset_path))
    table_path = folder / "pairs.csv"
    write_table(table, table_path)
    excluded_path = folder / "excluded_candidates.csv"
    write_table(pairs.excluded, excluded_path)
    stats = pairs.stats(config.histogram_bins)
    stats.update({f"n_pairs_{name}": len(frame) for name, frame in splits.items()})
    stats.update(
        {f"n_prompts_{name}": int(frame["prompt_id"].nunique()) for name, frame in splits.items()}
    )
    stats["k"] = config.k
    stats_path = folder / "stats.json"
    stats_path.write_text(json.dumps(stats, indent=2))
    return PairsArtifact(
        dataset_path=str(dataset_path),
        table_path=str(table_path),
        excluded_path=str(excluded_path),
        stats_path=str(stats_path),
        sha256=sha,
        stats=stats,
    )


@task(name="log_preference_pairs", cache_policy=NO_CACHE)
def log_preference_pairs(run_id: str, artifact: PairsArtifact) -> None:
    """The pairs as an MLflow dataset input, with their stats, histogram and files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = pd.read_csv(artifact.table_path)
    dataset = mlflow.data.from_pandas(
        table, source=artifact.dataset_path, name=f"preference-pairs-{artifact.sha256[:12]}"
    )
    mlflow.tracking.MlflowClient().log_inputs(
        run_id,
        datasets=[
            DatasetInput(
                dataset._to_mlflow_entity(),
                tags=[InputTag("mlflow.data.context", "train")],
            )
        ],
    )
    stats = artifact.stats
    tracking.log_metrics(
        run_id,
        {
            f"pairs.{key}": value
            for key, value in stats.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        },
    )
    tracking.log_file(run_id, artifact.stats_path, "preferences")
    tracking.log_file(run_id, artifact.table_path, "preferences")
    tracking.log_file(run_id, artifact.excluded_path, "preferences")
    figure, axis = plt.subplots(figsize=(6, 3.5))
    histogram = stats["delta_histogram"]
    if histogram["counts"]:
        edges = np.asarray(histogram["edges"])
        axis.bar(edges[:-1], histogram["counts"], width=np.diff(edges), align="edge")
    axis.axvline(stats["threshold"], color="black", linestyle="--", label="k·σ")
    axis.set_xlabel("HL(chosen) - HL(rejected)")
    axis.set_ylabel("pairs")
    axis.set_title(f"{stats['n_pairs']} pairs over {stats['prompts_covered']} prompts")
    axis.legend()
    tracking.log_figure(run_id, figure, "preferences/delta_histogram.png")


# -- policy model and training -----------------------------------------------------------------


@task(name="prepare_policy_model", cache_policy=NO_CACHE)
def prepare_policy_model(
    model_name_or_path: str, prompts_file: str, candidates_file: str, settings: HalSettings
) -> str:
    """The model to train: a hub id or folder as given, or a packaged or tiny model built once."""
    corpus = None
    if model_name_or_path == TINY_MODEL_NAME:
        corpus = synthlabs_corpus(
            settings.input_path(prompts_file), settings.input_path(candidates_file)
        )
    return resolve_policy_model(model_name_or_path, settings.home_dir / "models", corpus)


def _override_arguments(overrides: dict[str, Any]) -> list[str]:
    """``--key=value`` (the ``=`` keeps a negative number from reading as an option)."""
    return [
        f"--{key}={value if isinstance(value, str) else json.dumps(value)}"
        for key, value in overrides.items()
    ]


def _recipe_arguments(launch: TrainingLaunch) -> list[str]:
    overrides = {**launch.overrides, "output_dir": launch.output_dir}
    if launch.fresh_start:
        overrides["fresh_start"] = True
    return ["--config", launch.recipe_file, *_override_arguments(overrides)]


def _child_environment(settings: HalSettings, parent_run_id: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = settings.resolved_tracking_uri()
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TQDM_DISABLE", "1")
    env.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    if parent_run_id:
        env[PARENT_RUN_ENV] = parent_run_id
    else:
        env.pop(PARENT_RUN_ENV, None)
    return env


def accelerate_config_file(name: str) -> Path:
    """``infra/accelerate/<name>.yaml``, checked: it exists, reads as a YAML mapping, and asks
    for no GPUs that are missing."""
    config = PROJECT_ROOT / "infra" / "accelerate" / f"{name}.yaml"
    if not config.is_file():
        known = sorted(p.stem for p in config.parent.glob("*.yaml"))
        raise RecipeRejectedError(f"no accelerate config {config.name}; known: {known}")
    try:
        values = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise RecipeRejectedError(
            f"accelerate config {config}: cannot be read ({error})"
        ) from error
    if not isinstance(values, dict):
        raise RecipeRejectedError(f"accelerate config {config}: not a YAML mapping")
    if name == "ddp":
        import torch

        if not torch.cuda.is_available():
            raise RecipeRejectedError(
                "accelerate config 'ddp' needs GPUs; without them use 'zero2'"
            )
    return config


@task(name="check_training_recipe", cache_policy=NO_CACHE)
def check_training_recipe(
    recipe_file: str, overrides: dict[str, Any], accelerate_config: str, settings: HalSettings
) -> dict[str, Any]:
    """The training script's recipe check (keys, types, ranges) and the accelerate config's,
    run before any data is read; fail naming the recipe file, the key and the rule."""
    accelerate_config_file(accelerate_config)
    try:
        dpo_recipe.read_recipe(PROJECT_ROOT / recipe_file)
    except ValueError as error:
        raise RecipeRejectedError(str(error)) from error
    arguments = ["--config", recipe_file, *_override_arguments(overrides), "--check_only=true"]
    completed = subprocess.run(
        [sys.executable, TRAIN_SCRIPT, *arguments],
        cwd=PROJECT_ROOT,
        env=_child_environment(settings, None),
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        lines = [line for line in completed.stderr.splitlines() if "recipe error" in line]
        message = lines[-1] if lines else completed.stderr.strip()[-2000:]
        raise RecipeRejectedError(message)
    return json.loads(completed.stdout[completed.stdout.index("{") :])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_command(launch: TrainingLaunch, port: int | None = None) -> list[str]:
    """``accelerate launch --config_file infra/accelerate/<cfg>.yaml ... scripts/train_dpo.py``."""
    config = accelerate_config_file(launch.accelerate_config)
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config.relative_to(PROJECT_ROOT)),
        "--num_processes",
        str(launch.num_processes),
        # accelerate gives each process one CPU thread unless told (OMP_NUM_THREADS=1)
        "--num_cpu_threads_per_process",
        str(cpu_threads_per_process(launch.num_processes)),
        "--main_process_port",
        str(port or free_port()),
        TRAIN_SCRIPT,
        *_recipe_arguments(launch),
    ]


def cpu_threads_per_process(num_processes: int) -> int:
    """The CPUs this process may use, shared among the training processes (at least one)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (available or 1) // num_processes)


def start_training(launch: TrainingLaunch, settings: HalSettings) -> subprocess.Popen:
    """The training processes, in their own process group (so they can be stopped together)."""
    return subprocess.Popen(
        launch_command(launch),
        cwd=PROJECT_ROOT,
        env=_child_environment(settings, launch.parent_run_id),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )


def stop_process_tree(pid: int, sig: int = signal.SIGTERM) -> None:
    """Signal a process and all its descendants.

    torch's elastic launcher starts each rank in a session of its own, so signalling the
    launcher's process group would leave the ranks running.
    """
    try:
        root = psutil.Process(pid)
        processes = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        try:
            process.send_signal(sig)
        except psutil.NoSuchProcess:
            continue
    # The root is the caller's child: its exit status is left for the caller's wait().
    psutil.wait_procs(processes[:-1], timeout=30)


@task(name="launch_training", cache_policy=NO_CACHE)
def launch_training(launch: TrainingLaunch, settings: HalSettings) -> TrainingOutcome:
    """Train in ``accelerate launch`` subprocesses; stream their log; fail with its tail."""
    logger = get_run_logger()
    log_path = Path(launch.log_file)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    process = start_training(launch, settings)
    command = shlex.join(process.args)
    logger.info("launching: %s", command)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        with open(log_path, "a") as log:
            log.write(f"$ {command}\n")
            for line in process.stdout:
                log.write(line)
                log.flush()
                tail.append(line.rstrip())
                logger.info("%s", line.rstrip())
        returncode = process.wait()
    finally:
        if process.poll() is None:
            stop_process_tree(process.pid)
    if returncode != 0:
        raise TrainingFailedError(
            f"training exited with code {returncode} (log: {log_path}); last lines:\n"
            + "\n".join(tail)
        )
    checkpoints = [
        EpochCheckpoint(epoch=round(c.epoch), step=c.step, path=str(c.path))
        for c in complete_checkpoints(launch.output_dir)
        if abs(c.epoch - round(c.epoch)) < 1e-6 and round(c.epoch) > 0
    ]
    return TrainingOutcome(
        output_dir=launch.output_dir,
        log_file=str(log_path),
        run_id=recorded_run_id(launch.output_dir),
        command=command,
        checkpoints=checkpoints,
    )


@task(name="log_training_summary", cache_policy=NO_CACHE)
def log_training_summary(run_id: str, outcome: TrainingOutcome) -> dict[str, float]:
    """The training run's last reward figures copied to the stage run (``dpo.*`` names)."""
    client = mlflow.tracking.MlflowClient()
    tracking.log_file(run_id, outcome.log_file, "training")
    if outcome.run_id is None:
        return {}
    child = client.get_run(outcome.run_id).data.metrics
    names = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
    summary = {f"dpo.{name.replace('/', '.')}": child[name] for name in names if name in child}
    tracking.log_metrics(run_id, summary)
    client.set_tag(run_id, "hal.training_run_id", outcome.run_id)
    return summary


def input_digest(*parts: object) -> str:
    """A short hash of the inputs that decide a training run (keys its output folder)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
