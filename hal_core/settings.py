"""Process-wide settings, read from the environment (prefix ``HAL_``) and typed."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]
_DATA_HINT = (
    "The HAL data folder was not found. Set HAL_DATA_DIR to the folder that holds turing/, "
    "synthlabs/, questionnaires/ and aligned_outputs/ (the public data of the HAL paper, "
    "arXiv 2601.02813, released with its code under Apache-2.0), or place it at "
    "../shared/data/hal relative to the project root."
)


class DataDirNotFoundError(FileNotFoundError):
    """Raised when no HAL data folder can be located."""


class HomeNotWritableError(PermissionError):
    """HAL_HOME cannot be created or written."""


def _default_data_dir() -> Path | None:
    for base in (Path.cwd(), PROJECT_ROOT):
        candidate = (base / ".." / "shared" / "data" / "hal").resolve()
        if candidate.is_dir():
            return candidate
    return None


class HalSettings(BaseSettings):
    """Where data lives, where runs are tracked and what experiments are called."""

    model_config = SettingsConfigDict(env_prefix="HAL_", frozen=True, extra="forbid")

    data_dir: Path | None = Field(
        default_factory=_default_data_dir,
        description="Folder with the HAL public data (HAL_DATA_DIR).",
    )
    home: Path = Field(
        default=Path(".hal"),
        description="Working folder for local stores, caches and outputs (HAL_HOME).",
    )
    tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI (HAL_TRACKING_URI, else MLFLOW_TRACKING_URI); "
        "default: a SQLite store under HAL_HOME.",
    )
    experiment_data: str = Field(default="hal-data", description="MLflow experiment.")
    experiment_reward: str = Field(default="hal-reward", description="MLflow experiment.")
    experiment_traits: str = Field(default="hal-traits", description="MLflow experiment.")
    experiment_rating: str = Field(default="hal-rating", description="MLflow experiment.")
    experiment_judge: str = Field(default="hal-judge", description="MLflow experiment.")
    experiment_alignment: str = Field(default="hal-alignment", description="MLflow experiment.")
    experiment_evaluation: str = Field(default="hal-evaluation", description="MLflow experiment.")
    experiment_pipeline: str = Field(default="hal-pipeline", description="MLflow experiment.")
    mlflow_ui_url: str = Field(
        default="http://127.0.0.1:5000",
        description="MLflow UI serving a local store (`hal serve`), for links (HAL_MLFLOW_UI_URL).",
    )

    def require_data_dir(self) -> Path:
        """The data folder, or a clear error saying how to provide it."""
        if self.data_dir is None or not Path(self.data_dir).is_dir():
            raise DataDirNotFoundError(f"{_DATA_HINT} (looked at: {self.data_dir})")
        return Path(self.data_dir)

    def data_path(self, relative: str | Path) -> Path:
        """A path inside the data folder; absolute paths are returned unchanged."""
        relative = Path(relative)
        return relative if relative.is_absolute() else self.require_data_dir() / relative

    def input_path(self, name: str | Path) -> Path:
        """A file a user named: absolute, or relative to the working folder when it exists
        there, else inside the data folder."""
        path = Path(name)
        return path.resolve() if path.is_absolute() or path.exists() else self.data_path(path)

    @property
    def home_dir(self) -> Path:
        """HAL_HOME, created; a clear error when it cannot be written."""
        path = Path(self.home).resolve()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise HomeNotWritableError(f"HAL_HOME {path}: cannot create it ({error})") from error
        try:
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as error:
            raise HomeNotWritableError(
                f"HAL_HOME {path} is not writable ({error.strerror}): hal keeps its MLflow store, "
                "caches and outputs there; set HAL_HOME to a writable folder"
            ) from error
        return path

    def resolved_tracking_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        return f"sqlite:///{self.home_dir / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        return self.home_dir / "mlartifacts"


PROCESS_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",  # models ship in packages or folders; nothing comes from a hub
    "TOKENIZERS_PARALLELISM": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no telemetry (no network; SQLite contention)
    "DO_NOT_TRACK": "1",
    # OpenMP threads that sleep while they wait: on a shared 2-core machine a spinning torch
    # thread starves its partner (generation measured 10x slower). libgomp reads it when torch
    # is first imported, so a process sets it before that (the CLI, workers, images).
    "OMP_WAIT_POLICY": "PASSIVE",
    # A local ephemeral Prefect API on a busy 2-core machine can start slower than the default.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}


def apply_process_defaults() -> None:
    """Environment defaults for a hal process (a variable already set wins). Called where a
    process starts work: the CLI and every stage run; never at import."""
    for name, value in PROCESS_DEFAULTS.items():
        os.environ.setdefault(name, value)


def get_settings() -> HalSettings:
    """Fresh settings from the current environment."""
    return HalSettings()
