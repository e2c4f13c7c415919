"""Real servers as subprocesses on free 127.0.0.1 ports (no prefect_test_harness here)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers.processes import Servers, base_env, free_port, start, wait_until


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Servers]:
    """``mlflow server`` (SQLite, local artifacts) and ``hal serve``, started side by side.

    ``hal serve --deployment weekly-refit`` runs ``prefect server start --host 127.0.0.1``,
    creates the process work pools, starts a worker on ``hal-cpu`` and applies the
    ``fit_reward`` deployment of infra/prefect.yaml.
    """
    import time

    home = tmp_path_factory.mktemp("servers")
    started = time.monotonic()
    mlflow_url = f"http://127.0.0.1:{free_port()}"
    prefect_port = free_port()
    mlflow_command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host", "127.0.0.1",
        "--port", mlflow_url.rsplit(":", 1)[1],
        "--workers", "1",
        "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
        "--artifacts-destination", str(home / "mlartifacts"),
    ]  # fmt: skip
    serve_command = [
        sys.executable, "-m", "flows.cli", "serve",
        "--port", str(prefect_port),
        "--pool", "hal-cpu",
        "--deployment", "weekly-refit",
    ]  # fmt: skip
    env = base_env(home, data_dir)
    services = [start("mlflow-server", mlflow_command, env, home)]
    try:
        services.append(
            start("hal-serve", serve_command, env | {"MLFLOW_TRACKING_URI": mlflow_url}, home)
        )
        wait_until(
            lambda: httpx.get(f"{mlflow_url}/health", timeout=5).status_code == 200,
            180,
            "the MLflow server",
            services,
        )
        yield Servers(f"http://127.0.0.1:{prefect_port}/api", mlflow_url, services[1], started)
    finally:
        for service in reversed(services):
            service.stop()
