"""A Prefect API for one command: the configured server, or a local one that dies with us.

Prefect's own ephemeral server outlives a command killed with SIGKILL (it is a separate
process with nobody left to stop it). The server started here is bound to 127.0.0.1 and asks
the kernel to SIGTERM it when its parent dies (``PR_SET_PDEATHSIG``), so it cannot be orphaned.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx

from hal_core.settings import TEMPORARY_PREFECT_API

PR_SET_PDEATHSIG = 1
STARTUP_TIMEOUT_S = 180.0


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def configured_api_url() -> str | None:
    """The Prefect API this process is already pointed at (environment or profile), if any."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """The configured Prefect API, else a local server for the duration of the block."""
    configured = configured_api_url()
    if configured:
        yield configured
        return
    import prefect

    port = _free_port()
    command = [sys.executable, "-m", "uvicorn", "--app-dir", os.path.dirname(prefect.__path__[0]),
               "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "error", "--lifespan", "on"]  # fmt: skip
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    server = subprocess.Popen(command, preexec_fn=preexec, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    try:
        _wait_healthy(url, server)
        from prefect.settings import PREFECT_API_URL, temporary_settings

        os.environ["PREFECT_API_URL"] = url  # for child processes
        os.environ[TEMPORARY_PREFECT_API] = url  # links to its flow runs point at `hal serve`
        with temporary_settings(updates={PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                _drain_to_api()
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        os.environ.pop(TEMPORARY_PREFECT_API, None)
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def _drain_to_api(timeout_s: float = 10.0) -> None:
    """Send the logs and events still queued before the server goes."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=timeout_s)
    EventsWorker.drain_all(timeout=timeout_s)


def _wait_healthy(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the local Prefect server exited with code {server.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the local Prefect server at {url} did not start in {STARTUP_TIMEOUT_S} s")
