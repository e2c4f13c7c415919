"""``hal serve``: a Prefect server, its workers and an MLflow UI on 127.0.0.1, stopped together.

What starts, and why:

- ``prefect server start`` on 127.0.0.1, unless ``--api-url`` names a server already running
  (``infra/compose.yaml`` runs its worker that way). Its UI is told its own API address, so it
  works on any ``--port``.
- ``mlflow server`` on 127.0.0.1 over the local store (SQLite under ``HAL_HOME``), one web
  worker and no job runner: a UI for the runs the flows write. When ``MLFLOW_TRACKING_URI``
  names a tracking server instead, that server is the UI and nothing is started.
- a process worker per work pool of ``infra/prefect.yaml`` this machine can serve: ``hal-gpu``
  only where torch sees a GPU. Workers start after the deployments are applied, so the
  SQLite-backed server does not take their first heartbeats during the deploy's writes.

Every store is the home's own: Prefect's DB lives in ``HAL_HOME/prefect`` (the CLI sets
``PREFECT_HOME`` unless you did), so the UI shows the flow runs of this home. Both stores are
created or migrated under a file lock first (:func:`prepare_prefect_db`), as a command starting
beside us on a new home would otherwise build the same schema at the same time.

SIGTERM or SIGINT stops every process of the tree at once; what has not exited after
``STOP_GRACE_S`` is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import httpx
import psutil
import yaml

from hal_core.settings import PROJECT_ROOT, get_settings, sqlite_file, store_lock

GPU_POOL = "hal-gpu"
STOP_GRACE_S = 5.0
STARTUP_TIMEOUT_S = 600.0
READY_LINE = "Ctrl-C stops everything"


class _Stop(Exception):
    """SIGTERM or SIGINT: stop the children."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(f"signal {signum}")


def wait_for_http(
    url: str, process: subprocess.Popen | None = None, timeout_s: float = STARTUP_TIMEOUT_S
) -> None:
    """Wait until ``url`` answers 200; fail naming it, at once when ``process`` has exited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise click.ClickException(
                f"{' '.join(map(str, process.args[:6]))} exited with code {process.returncode} "
                f"before {url} answered"
            )
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise click.ClickException(f"nothing answered at {url} within {timeout_s:.0f} s")


def prefect_sqlite_file() -> Path | None:
    """The SQLite file of the Prefect DB a local server would use (None: not SQLite, or not
    migrated by us because ``PREFECT_API_DATABASE_MIGRATE_ON_START`` is off)."""
    from prefect.settings import get_current_settings

    database = get_current_settings().server.database
    url = database.connection_url.get_secret_value() if database.connection_url else ""
    return sqlite_file(url) if database.migrate_on_start else None


def prepare_prefect_db() -> Path | None:
    """Create or migrate the SQLite DB of a local Prefect server under its file lock, before a
    server starts on it; returns the file (None: nothing to do, see :func:`prefect_sqlite_file`).

    A Prefect server migrates its DB as it starts, without a lock: two commands starting at once
    on a new HAL_HOME raced there, and one server exited (alembic: "expected to match one row").
    A stamp beside the DB names the Prefect version it was migrated to, so that later commands
    skip the check (5 s of imports and alembic).
    """
    from importlib.metadata import version

    path = prefect_sqlite_file()
    if path is None:
        return None
    stamp_file = path.with_name(f"{path.name}.hal-migrated")
    stamp = f"prefect {version('prefect')}\n"

    def current() -> bool:
        return path.is_file() and stamp_file.is_file() and stamp_file.read_text() == stamp

    if current():
        return path
    with store_lock(path):
        if not current():
            import anyio
            from prefect.server.database.alembic_commands import alembic_upgrade

            anyio.run(anyio.to_thread.run_sync, alembic_upgrade)
            stamp_file.write_text(stamp)
    return path


def create_process_pools(api_url: str, names: list[str]) -> None:
    """Create (or reset) process work pools through the REST API.

    Plain HTTP on purpose: Prefect's client starts background threads that delay this
    process's exit after the server it talked to is gone.
    """
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    with httpx.Client(base_url=api_url, timeout=60) as client:
        for name in names:
            body = {"name": name, "type": "process", "base_job_template": template}
            created = client.post("/work_pools/", json=body)
            if created.status_code == 409:  # exists: reset its job template
                created = client.patch(f"/work_pools/{name}", json={"base_job_template": template})
            if created.is_error:
                raise click.ClickException(
                    f"cannot create work pool {name} at {api_url}: {created.status_code} "
                    f"{created.text[:300]}"
                )


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def pools_to_serve(all_pools: list[str], requested: list[str]) -> list[str]:
    """The pools named on the command line, else every pool; ``hal-gpu`` only with a GPU."""
    return requested or [pool for pool in all_pools if pool != GPU_POOL or has_gpu()]


def is_tracking_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def mlflow_ui_command(port: int, tracking_uri: str, artifact_root: Path) -> list[str]:
    """An MLflow UI over a local store: one web worker, no job runner (a UI, not a service)."""
    return [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1",
            "--backend-store-uri", tracking_uri,
            "--default-artifact-root", artifact_root.as_uri()]  # fmt: skip


def stop_all(children: list[subprocess.Popen], grace_s: float = STOP_GRACE_S) -> int:
    """SIGTERM every child and its descendants at once; SIGKILL what is left after the grace.

    Returns how many processes had to be killed.
    """
    processes: list[psutil.Process] = []
    for child in children:
        try:
            root = psutil.Process(child.pid)
            processes += [*root.children(recursive=True), root]
        except psutil.NoSuchProcess:
            continue
    for process in processes:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
    for child in children:
        child.wait()
    return len(alive)


def serve_locally(
    port: int,
    mlflow_port: int,
    api_url: str | None,
    pools: list[str],
    deployments: list[str],
    prefect_file: str,
) -> None:
    """Start the servers and workers, apply the deployments, print the URLs, run until stopped."""
    from tasks.tracking import prepare_store

    settings = get_settings()
    spec_path = Path(prefect_file)
    spec_path = spec_path if spec_path.is_absolute() else PROJECT_ROOT / spec_path
    specs = (yaml.safe_load(spec_path.read_text()) or {}).get("deployments") or []
    unknown = sorted(set(deployments) - {d["name"] for d in specs})
    if unknown:
        raise click.BadParameter(f"{spec_path} has no deployments {unknown}")
    all_pools = sorted({d["work_pool"]["name"] for d in specs})
    served = pools_to_serve(all_pools, pools)
    chosen = [d for d in specs if not deployments or d["name"] in deployments]
    env = {**os.environ, "HAL_PROJECT_DIR": os.environ.get("HAL_PROJECT_DIR", str(PROJECT_ROOT))}
    prefect = [sys.executable, "-m", "prefect", "--no-prompt"]
    tracking_uri = settings.resolved_tracking_uri()
    children: list[subprocess.Popen] = []
    previous = signal.signal(signal.SIGTERM, _raise_stop)  # `docker stop` and kill
    try:
        server = mlflow_ui = None
        if api_url is None:
            prepare_prefect_db()
            api_url = f"http://127.0.0.1:{port}/api"
            command = [*prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
            # Without it the UI calls the API on the default port, whatever --port says.
            server_env = {**env, "PREFECT_UI_API_URL": api_url}
            server = subprocess.Popen(command, env=server_env)
            children.append(server)
        if is_tracking_server(tracking_uri):
            mlflow_url = tracking_uri.rstrip("/")
        else:
            mlflow_url = f"http://127.0.0.1:{mlflow_port}"
            prepare_store(tracking_uri)
            command = mlflow_ui_command(mlflow_port, tracking_uri, settings.artifact_root)
            mlflow_env = {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
            mlflow_ui = subprocess.Popen(command, env=mlflow_env)
            children.append(mlflow_ui)
            # Links from Prefect to MLflow runs point at this UI.
            env["HAL_MLFLOW_UI_URL"] = mlflow_url
        env["PREFECT_API_URL"] = api_url
        wait_for_http(f"{api_url}/health", server)
        create_process_pools(api_url, all_pools)
        if chosen:
            names = [flag for d in chosen for flag in ("--name", d["name"])]
            deploy = [*prefect, "deploy", "--prefect-file", str(spec_path), *names]
            subprocess.run(deploy, env=env, cwd=PROJECT_ROOT, check=True)
        for name in served:
            worker = [*prefect, "worker", "start", "--pool", name, "--type", "process"]
            children.append(subprocess.Popen(worker, env=env, cwd=PROJECT_ROOT))
        if mlflow_ui is not None:
            wait_for_http(f"{mlflow_url}/health", mlflow_ui)
        skipped = sorted(set(all_pools) - set(served))
        why = "not asked for" if pools else "no GPU here"
        click.echo(f"Prefect UI   {api_url.removesuffix('/api')}   (API {api_url})")
        click.echo(f"MLflow UI    {mlflow_url}")
        click.echo(f"workers on   {', '.join(served)}" + (
            f"   (not started: {', '.join(skipped)}: {why})" if skipped else ""))  # fmt: skip
        click.echo(READY_LINE)
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        raise click.ClickException("a server or worker stopped; stopping the rest")
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        stopping = time.monotonic()
        killed = stop_all(children)
        click.echo(
            f"stopped in {time.monotonic() - stopping:.1f} s"
            + (f" ({killed} killed after {STOP_GRACE_S:.0f} s)" if killed else ""),
            err=True,
        )
