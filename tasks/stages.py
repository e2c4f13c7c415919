"""The pipeline's stage cache: a stage's key, and its recorded result under HAL_HOME.

A stage is skipped when a result is recorded under its key: the stage's label and parameters
(the parent run excluded), the data folder and the code (sources and recipes), and the results
of the stages it reads.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from hal_core.settings import PROJECT_ROOT, HalSettings
from hal_core.tables import atomic_write_text

SOURCE_PACKAGES = ("hal_core", "tasks", "flows", "scripts")


def folder_fingerprint(folder: Path, pattern: str = "**/*") -> str:
    """sha256 over the relative paths and bytes of every file under ``folder``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.glob(pattern) if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def code_fingerprint() -> str:
    """Hash of the project's Python sources and recipes: a code change reruns every stage."""
    parts = [folder_fingerprint(PROJECT_ROOT / package, "**/*.py") for package in SOURCE_PACKAGES]
    parts.append(folder_fingerprint(PROJECT_ROOT / "infra", "**/*.y*ml"))
    return hashlib.sha256("".join(parts).encode()).hexdigest()


def input_fingerprint(settings: HalSettings) -> str:
    """The data folder and the code, in one hash."""
    data = folder_fingerprint(settings.require_data_dir())
    return hashlib.sha256(f"{data}:{code_fingerprint()}".encode()).hexdigest()


def stage_key(label: str, params: BaseModel, fingerprint: str, needs: list[Any]) -> str:
    """The key a stage's result is recorded under."""
    payload = {
        "stage": label,
        "params": params.model_dump(mode="json", exclude={"parent_run_id"}),
        "inputs": fingerprint,
        "needs": needs,
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return f"{label.replace(':', '-')}-{hashlib.sha256(blob).hexdigest()[:24]}"


class StageCache:
    """Recorded stage results, one JSON file per key, written atomically."""

    def __init__(self, home: Path) -> None:
        self.folder = home / "stage-cache"
        self.folder.mkdir(parents=True, exist_ok=True)

    def read(self, key: str) -> dict | None:
        path = self.folder / f"{key}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def write(self, key: str, result: dict) -> None:
        atomic_write_text(self.folder / f"{key}.json", json.dumps(result, indent=2))
