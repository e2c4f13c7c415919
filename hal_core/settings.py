"""Process-wide settings, read from the environment (prefix ``HAL_``) and typed."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import tempfile
import tomllib
from collections.abc import Iterator, Mapping, MutableMapping
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
    prefect_ui_url: str = Field(
        default="http://127.0.0.1:4200",
        description="Prefect UI of `hal serve` on this HAL_HOME, for links to flow runs that ran "
        "on a command's temporary Prefect API (HAL_PREFECT_UI_URL).",
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

    @property
    def prefect_home(self) -> Path:
        """Prefect's local state of this home (its SQLite DB, profiles, storage): not created."""
        return Path(self.home).resolve() / "prefect"


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


TEMPORARY_PREFECT_API = "HAL_TEMPORARY_PREFECT_API"
"""Set while a command runs on a Prefect API of its own that goes when it ends (hal_cli's
``prefect_api``): links to its flow runs point at `hal serve` on the same Prefect home."""

DERIVED_PREFECT_HOME = "HAL_DERIVED_PREFECT_HOME"
"""Set beside a PREFECT_HOME that hal derived from HAL_HOME (not the user's choice), so that a
child process with another HAL_HOME derives its own."""


def user_profile_api_url(environ: Mapping[str, str], user_home: Path) -> str | None:
    """PREFECT_API_URL of the active profile in the user's own Prefect profiles file, if any
    (``prefect cloud login`` and ``prefect config set`` write it there)."""
    path = Path(environ.get("PREFECT_PROFILES_PATH") or user_home / ".prefect" / "profiles.toml")
    try:
        profiles = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None  # no profiles file of one's own: Prefect's defaults (a local API)
    active = environ.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    profile = (profiles.get("profiles") or {}).get(active) or {}
    return profile.get("PREFECT_API_URL") or None


def derived_prefect_home(
    settings: HalSettings, environ: Mapping[str, str], user_home: Path
) -> Path | None:
    """The PREFECT_HOME a hal process on this HAL_HOME uses, or None where the user chose
    Prefect's home or API themselves (PREFECT_HOME, PREFECT_API_URL, or an API URL in their
    active profile): then Prefect's state is theirs to place."""
    home = environ.get("PREFECT_HOME")
    if home and home != environ.get(DERIVED_PREFECT_HOME):
        return None
    if environ.get("PREFECT_API_URL") or user_profile_api_url(environ, user_home):
        return None
    return settings.prefect_home


def isolate_prefect_home(environ: MutableMapping[str, str] = os.environ) -> Path | None:
    """Keep Prefect's state (flow runs, its DB, profiles) inside HAL_HOME, so that each HAL_HOME
    is a whole, separate store: sets PREFECT_HOME unless the user placed Prefect themselves.

    Prefect reads its settings when it is first imported, so this runs before that (the CLI);
    in a process that has already imported prefect it changes nothing and returns None.
    """
    if "prefect" in sys.modules:
        return None
    home = derived_prefect_home(get_settings(), environ, Path.home())
    if home is not None:
        environ["PREFECT_HOME"] = environ[DERIVED_PREFECT_HOME] = str(home)
        # Prefect creates its home without parents, at import; a HAL_HOME that cannot be
        # written is reported where hal first writes there (HalSettings.home_dir)
        with contextlib.suppress(OSError):
            home.mkdir(parents=True, exist_ok=True)
    return home


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (``sqlite:///``, ``sqlite+aiosqlite:///``...); None for a server,
    another database or an in-memory one."""
    scheme, separator, rest = url.partition(":///")
    if not separator or not scheme.startswith("sqlite"):
        return None
    file = rest.partition("?")[0]
    return Path(file).resolve() if file and file != ":memory:" else None


@contextlib.contextmanager
def store_lock(store: Path) -> Iterator[None]:
    """Hold an inter-process lock on the file ``<store>.lock`` while a store is created or
    migrated: two commands starting at once on a new HAL_HOME would otherwise both build the
    schema of the same SQLite file, and one of them would crash."""
    lock = store.with_name(f"{store.name}.lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        handle = lock.open("a")
    except OSError as error:
        raise OSError(
            f"{lock}: cannot open the lock file that guards the creation of {store.name} "
            f"({error.strerror}); its folder must be writable"
        ) from error
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed, or the process dies
        yield
