"""``hal serve``: a Prefect server, its workers and an MLflow UI on 127.0.0.1, stopped together."""

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

from hal_core.settings import PROJECT_ROOT, get_settings

GPU_POOL = "hal-gpu"
STOP_GRACE_S = 5.0


class _Stop(Exception):
    """SIGTERM or SIGINT: stop the children."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(f"signal {signum}")


def wait_for_http(url: str, timeout_s: float = 180.0) -> None:
    """Wait until ``url`` answers 200, or fail naming it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise click.ClickException(f"nothing answered at {url} within {timeout_s:.0f} s")


def create_process_pools(api_url: str, names: list[str]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    with (
        temporary_settings(updates={PREFECT_API_URL: api_url}),
        get_client(sync_client=True) as client,
    ):
        for name in names:
            pool = WorkPoolCreate(name=name, type="process", base_job_template=template)
            client.create_work_pool(pool, overwrite=True)


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def stop_all(children: list[subprocess.Popen], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM every child and its descendants at once; SIGKILL what is left after the grace."""
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


def serve_locally(
    port: int,
    mlflow_port: int,
    api_url: str | None,
    pools: list[str],
    deployments: list[str],
    prefect_file: str,
) -> None:
    """Start the servers and workers, apply the deployments, print the URLs, run until stopped."""
    settings = get_settings()
    spec_path = Path(prefect_file)
    spec_path = spec_path if spec_path.is_absolute() else PROJECT_ROOT / spec_path
    specs = (yaml.safe_load(spec_path.read_text()) or {}).get("deployments") or []
    unknown = sorted(set(deployments) - {d["name"] for d in specs})
    if unknown:
        raise click.BadParameter(f"{spec_path} has no deployments {unknown}")
    all_pools = sorted({d["work_pool"]["name"] for d in specs})
    served = pools or [p for p in all_pools if p != GPU_POOL or has_gpu()]
    chosen = [d for d in specs if not deployments or d["name"] in deployments]
    env = {**os.environ, "HAL_PROJECT_DIR": os.environ.get("HAL_PROJECT_DIR", str(PROJECT_ROOT))}
    prefect = [sys.executable, "-m", "prefect", "--no-prompt"]
    children: list[subprocess.Popen] = []
    previous = signal.signal(signal.SIGTERM, _raise_stop)  # `docker stop` and kill
    try:
        if api_url is None:
            api_url = f"http://127.0.0.1:{port}/api"
            server = [*prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
            children.append(subprocess.Popen(server, env=env))
        mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        mlflow_ui = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                     "--port", str(mlflow_port),
                     "--backend-store-uri", settings.resolved_tracking_uri(),
                     "--default-artifact-root", settings.artifact_root.as_uri()]  # fmt: skip
        children.append(subprocess.Popen(mlflow_ui, env=env))
        env["PREFECT_API_URL"] = api_url
        wait_for_http(f"{api_url}/health")
        create_process_pools(api_url, all_pools)
        for name in served:
            worker = [*prefect, "worker", "start", "--pool", name, "--type", "process"]
            children.append(subprocess.Popen(worker, env=env, cwd=PROJECT_ROOT))
        if chosen:
            names = [flag for d in chosen for flag in ("--name", d["name"])]
            deploy = [*prefect, "deploy", "--prefect-file", str(spec_path), *names]
            subprocess.run(deploy, env=env, cwd=PROJECT_ROOT, check=True)
        wait_for_http(f"{mlflow_url}/health")
        skipped = sorted(set(all_pools) - set(served))
        click.echo(f"Prefect UI   {api_url.removesuffix('/api')}   (API {api_url})")
        click.echo(f"MLflow UI    {mlflow_url}")
        click.echo(f"workers on   {', '.join(served)}" + (
            f"   (not started: {', '.join(skipped)}: no GPU here)" if skipped else ""))  # fmt: skip
        click.echo("Ctrl-C stops everything")
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        raise click.ClickException("a server or worker stopped; stopping the rest")
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop_all(children)
