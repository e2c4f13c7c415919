"""Processes for the real-server tests: free ports, process trees, waiting, environment.

Every process is started in its own session, so the whole tree it spawns (server workers,
flow-run subprocesses) is stopped at the end, even when a test fails.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import httpx
import pytest

from hal_core.settings import PROJECT_ROOT

REQUIRE_SERVERS = "HAL_REQUIRE_SERVERS"
"""Set to 1 (``.ci/run`` does) to make a missing server binary or client a failure."""


def missing(what: str) -> NoReturn:
    """Skip a test whose server software is absent; fail instead under HAL_REQUIRE_SERVERS=1."""
    if os.environ.get(REQUIRE_SERVERS) == "1":
        pytest.fail(f"{what}; {REQUIRE_SERVERS}=1 requires it (.ci/run installs it)")
    pytest.skip(f"{what} (install it, or set {REQUIRE_SERVERS}=1 to fail instead)")


def require_module(name: str, install: str) -> ModuleType:
    """The Python module ``name``, or a skip (a failure under HAL_REQUIRE_SERVERS=1)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"Python module {name} is not installed ({install})")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Service:
    """A started process tree and where its output goes."""

    name: str
    process: subprocess.Popen
    log: Path

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} ({self.log}) ---\n" + "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the whole process tree at once: no shutdown code runs."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM to the leader (it stops its children), then SIGKILL whatever is left."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


def start(name: str, command: list[str], env: dict[str, str], folder: Path) -> Service:
    log = folder / f"{name}.log"
    handle = log.open("w")
    process = subprocess.Popen(
        command,
        env=env,
        cwd=PROJECT_ROOT,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    handle.close()
    return Service(name, process, log)


def wait_until(check, timeout_s: float, what: str, services: list[Service]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for service in services:
            if service.process.poll() is not None:
                pytest.fail(f"{service.name} exited while waiting for {what}\n{service.tail()}")
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(
        f"timed out after {timeout_s:.0f} s waiting for {what}\n"
        + "\n".join(s.tail() for s in services)
    )


def base_env(home: Path, data_dir: Path) -> dict[str, str]:
    """The environment of every process: isolated homes, nothing inherited from other tests."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_", "MLFLOW_", "HAL_"))
    }
    env.update(
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
        HAL_HOME=str(home / "hal"),
        HAL_DATA_DIR=str(data_dir),
        HAL_PROJECT_DIR=str(PROJECT_ROOT),
        HF_HUB_OFFLINE="1",
        GX_ANALYTICS_ENABLED="false",
        PYTHONUNBUFFERED="1",
    )
    return env
