"""Real servers as subprocesses on free 127.0.0.1 ports (no prefect_test_harness here)."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from hal_cli.serving import READY_LINE
from tests.servers.processes import Service, base_env, free_port, start, wait_until

SERVED_DEPLOYMENTS = ("weekly-refit", "rate-dialogues", "cpu")


@dataclass
class Served:
    """A running ``hal serve``: the URLs it printed and its process."""

    prefect_ui: str
    prefect_api: str
    mlflow_url: str
    port: int
    mlflow_port: int
    service: Service
    home: Path
    ready_s: float

    def printed(self) -> str:
        return self.service.log.read_text(errors="replace")


def printed_url(text: str, label: str) -> str:
    found = re.search(rf"^{label}\s+(http://\S+)", text, re.M)
    assert found, f"hal serve did not print the {label} URL:\n{text[-2000:]}"
    return found.group(1)


TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@contextmanager
def serving(home: Path, data_dir: Path, args: list[str], env: dict[str, str] | None = None):
    """``hal serve ARGS`` on free ports over ``home``, until the block ends."""
    port, mlflow_port = free_port(), free_port()
    command = [sys.executable, "-m", "hal_cli", "serve", "--port", str(port),
               "--mlflow-port", str(mlflow_port), *args]  # fmt: skip
    started = time.monotonic()
    service = start("hal-serve", command, base_env(home, data_dir) | (env or {}), home)
    try:
        # A busy 2-core machine takes minutes to migrate a new database and deploy.
        wait_until(lambda: READY_LINE in service.log.read_text(), 900, "hal serve", [service])
        text = service.log.read_text()
        prefect_ui = printed_url(text, "Prefect UI")
        yield Served(
            prefect_ui=prefect_ui,
            prefect_api=f"{prefect_ui}/api",
            mlflow_url=printed_url(text, "MLflow UI"),
            port=port,
            mlflow_port=mlflow_port,
            service=service,
            home=home,
            ready_s=time.monotonic() - started,
        )
    finally:
        service.stop()


def wait_for_flow_run(prefect: httpx.Client, flow_run_id: str, served: Served) -> dict:
    """The flow run once it ended, which must be COMPLETED (the server's log tail if not)."""
    state: dict = {}

    def finished() -> bool:
        state.update(prefect.get(f"/flow_runs/{flow_run_id}").json())
        return state["state_type"] in TERMINAL

    wait_until(finished, 900, f"flow run {flow_run_id}", [served.service])
    assert state["state_type"] == "COMPLETED", f"{state['state']}\n{served.service.tail(120)}"
    return state


@pytest.fixture(scope="module")
def hal_serve(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Served]:
    """``hal serve`` as a user runs it, on free ports, with the Prefect UI on.

    It starts ``prefect server start`` and an MLflow UI over the local SQLite store (both on
    127.0.0.1), creates the work pools, applies the ``weekly-refit`` (fit_reward),
    ``rate-dialogues`` and ``cpu`` (the pipeline) deployments of infra/prefect.yaml and starts
    a worker per pool this machine can serve. No ``--pool``: the test checks which pools it picked.
    """
    deployments = [flag for name in SERVED_DEPLOYMENTS for flag in ("--deployment", name)]
    home = tmp_path_factory.mktemp("hal-serve")
    with serving(home, data_dir, deployments, {"PREFECT_SERVER_UI_ENABLED": "true"}) as served:
        yield served
