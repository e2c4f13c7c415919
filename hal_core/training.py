"""The layout of a DPO training folder, shared by the launcher (``tasks/training.py``) and the
training script (``scripts/train_dpo.py``) across their process boundary."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

TRAIN_SCRIPT = "scripts/train_dpo.py"
"""The entry point ``accelerate launch`` runs, relative to the project root."""
RUN_RECORD = "hal_mlflow_run.json"
"""Written into ``output_dir``: the MLflow run a resumed training keeps logging to."""
PARENT_RUN_ENV = "HAL_MLFLOW_PARENT_RUN_ID"
"""Environment variable with the MLflow run the training run nests under."""
PARAMETER_REPORT = "parameter_changes.json"
"""Written into ``output_dir``: which trainable and frozen parameters training changed."""
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint folder: its step, the epoch it ended, its path."""

    step: int
    epoch: float
    path: Path


def complete_checkpoints(output_dir: str | Path) -> list[Checkpoint]:
    """``checkpoint-N`` folders whose trainer state was written (a killed save is skipped),
    oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = CHECKPOINT_PATTERN.match(child.name)
        state = child / "trainer_state.json"
        if match and child.is_dir() and state.is_file():
            epoch = float(json.loads(state.read_text()).get("epoch") or 0.0)
            found.append(Checkpoint(int(match.group(1)), epoch, child))
    return sorted(found, key=lambda checkpoint: checkpoint.step)


def last_complete_checkpoint(output_dir: str | Path) -> Checkpoint | None:
    """The newest complete checkpoint, or None."""
    checkpoints = complete_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def recorded_run_id(output_dir: str | Path) -> str | None:
    """The MLflow run recorded in ``output_dir`` by the training script, if any."""
    record = Path(output_dir) / RUN_RECORD
    return json.loads(record.read_text())["run_id"] if record.is_file() else None
