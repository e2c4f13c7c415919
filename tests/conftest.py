"""Shared fixtures: real data location, an isolated HAL_HOME and MLflow store per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hal_core.settings import HalSettings, apply_process_defaults

apply_process_defaults()
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real HAL data; tests that need it are skipped only when it is absent."""
    settings = HalSettings()
    if settings.data_dir is None or not Path(settings.data_dir).is_dir():
        pytest.skip("HAL data folder not found (set HAL_DATA_DIR)")
    return Path(settings.data_dir)


@pytest.fixture(scope="session")
def hal_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hal_home")


@pytest.fixture()
def settings(hal_home: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> HalSettings:
    """Settings whose MLflow store and working files live in a temporary folder."""
    monkeypatch.setenv("HAL_HOME", str(hal_home))
    monkeypatch.setenv("HAL_DATA_DIR", str(data_dir))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("HAL_TRACKING_URI", raising=False)
    return HalSettings()


@pytest.fixture(scope="session")
def smollm2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct converted from its registry package once per session (~1-3 min)."""
    from hal_core.policy_model import DEFAULT_POLICY_MODEL, resolve_policy_model

    models = tmp_path_factory.mktemp("models")
    return Path(resolve_policy_model(DEFAULT_POLICY_MODEL, models))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest files first (the demo, then files with slow tests), so that the two xdist
    workers of ``make test`` finish together (the Makefile turns off xdist's own reordering,
    which puts files with many tests first); order inside a file is kept."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item: pytest.Item) -> int:
        if item.path.name == "test_demo.py":
            return 0
        return 1 if item.path in slow_files else 2

    items.sort(key=rank)
