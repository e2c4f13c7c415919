"""MLflow conventions shared by every stage: where runs go, how stages nest, what inputs were."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import mlflow
import psutil
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from pydantic import Field

from hal_core.settings import HalSettings, apply_process_defaults
from hal_core.tables import file_sha256

ParentRunId = Annotated[
    str | None, Field(description="MLflow run to nest under (set by the pipeline).")
]
"""A stage's ``parent_run_id`` parameter: ``parent_run_id: ParentRunId = None``."""


def configure_tracking(settings: HalSettings) -> str:
    """Point MLflow at the configured store and return its URI."""
    uri = settings.resolved_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def ensure_experiment(name: str, settings: HalSettings) -> str:
    """The experiment's id, created with artifacts under HAL_HOME when the store is local."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    uri = settings.resolved_tracking_uri()
    artifact_location = None
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        artifact_location = (settings.artifact_root / name).as_uri()
    return client.create_experiment(name, artifact_location=artifact_location)


@contextmanager
def stage_run(
    run_name: str,
    experiment: str,
    settings: HalSettings,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run named after the flow; nested under ``parent_run_id`` when given.

    The run is tagged with its stage, its process and, inside a Prefect flow run, that flow
    run's id and UI link; the flow run gets a link artifact back to the MLflow run. Runs of
    this experiment left RUNNING by a process that no longer exists are closed as KILLED first.
    """
    apply_process_defaults()
    configure_tracking(settings)
    if parent_run_id:
        parent = MlflowClient().get_run(parent_run_id)
        experiment_id = parent.info.experiment_id
    else:
        experiment_id = ensure_experiment(experiment, settings)
    close_stale_runs(experiment_id)
    with mlflow.start_run(
        run_name=run_name,
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        nested=parent_run_id is not None,
        tags={**run_tags(run_name), **dict(tags or {})},
    ) as run:
        link_prefect_to_mlflow(run, settings)
        yield run


def run_tags(stage: str) -> dict[str, str]:
    """Stage, process and, inside a Prefect flow run, its id and UI link."""
    from prefect.runtime import flow_run

    tags = {"hal.stage": stage, "hal.host": socket.gethostname(), "hal.pid": str(os.getpid())}
    if flow_run.id:
        tags["prefect.flow_run_id"] = str(flow_run.id)
        tags["prefect.flow_run_name"] = str(flow_run.name)
        if flow_run.ui_url:
            tags["prefect.flow_run_url"] = str(flow_run.ui_url)
    return tags


def mlflow_run_url(run: mlflow.ActiveRun, settings: HalSettings) -> str:
    """The run's page in the MLflow UI (``HAL_MLFLOW_UI_URL`` for a local store)."""
    uri = settings.resolved_tracking_uri()
    base = uri if uri.startswith(("http://", "https://")) else settings.mlflow_ui_url
    return f"{base.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"


def link_prefect_to_mlflow(run: mlflow.ActiveRun, settings: HalSettings) -> None:
    """Inside a Prefect flow run: a link artifact to the MLflow run, and the URL in the log."""
    from prefect.artifacts import create_link_artifact
    from prefect.context import FlowRunContext
    from prefect.logging import get_run_logger

    url = mlflow_run_url(run, settings)
    mlflow.set_tag("hal.mlflow_run_url", url)
    if FlowRunContext.get() is None:
        return
    get_run_logger().info("MLflow run %s: %s", run.info.run_id, url)
    create_link_artifact(
        link=url,
        link_text=f"MLflow run {run.info.run_name} ({run.info.run_id[:8]})",
        description=f"The MLflow run of this flow run (experiment {run.info.experiment_id}).",
    )


def close_stale_runs(experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs of this host whose process is gone (a SIGKILLed command)."""
    client = MlflowClient()
    host = socket.gethostname()
    closed = []
    for run in client.search_runs(
        [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=500
    ):
        tags = run.data.tags
        if tags.get("hal.host") != host or not tags.get("hal.pid", "").isdigit():
            continue
        pid = int(tags["hal.pid"])
        started = run.info.start_time / 1000
        alive = psutil.pid_exists(pid) and psutil.Process(pid).create_time() <= started + 1
        if not alive:
            client.set_tag(run.info.run_id, "hal.closed_reason", f"process {pid} is gone")
            client.set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
    return closed


def input_hashes(paths: Mapping[str, str | Path]) -> dict[str, str]:
    """sha256 of each named input file."""
    return {name: file_sha256(path) for name, path in paths.items()}


def log_inputs(run_id: str, paths: Mapping[str, str | Path]) -> dict[str, str]:
    """Record each input file's path and hash as params of the run, and its short hash as the
    tag ``hal.data.<role>`` (runs on other data are told apart at a glance)."""
    client = MlflowClient()
    hashes = input_hashes(paths)
    for name, path in paths.items():
        client.log_param(run_id, f"input.{name}.path", str(path))
        client.log_param(run_id, f"input.{name}.sha256", hashes[name])
        client.set_tag(run_id, f"hal.data.{name}", hashes[name][:12])
    return hashes


def tag_run(run_id: str, tags: Mapping[str, object]) -> None:
    """Tags that say what differs between runs of a stage (``hal.judge``, ...)."""
    client = MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


def log_json(run_id: str, payload: Any, artifact_file: str) -> None:
    """Write a JSON artifact (``artifact_file`` may include folders)."""
    MlflowClient().log_text(run_id, json.dumps(payload, indent=2, default=str), artifact_file)


def log_text(run_id: str, text: str, artifact_file: str) -> None:
    """Write a text artifact (``artifact_file`` may include folders)."""
    MlflowClient().log_text(run_id, text, artifact_file)


def log_file(run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    path = Path(path)
    client = MlflowClient()
    if path.is_dir():
        client.log_artifacts(run_id, str(path), artifact_path)
    else:
        client.log_artifact(run_id, str(path), artifact_path)


def log_figure(run_id: str, figure: Any, artifact_file: str) -> None:
    """Save a matplotlib figure as a PNG artifact and close it."""
    import matplotlib.pyplot as plt

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(artifact_file).name
        figure.savefig(path, dpi=120, bbox_inches="tight")
        parent = str(Path(artifact_file).parent)
        MlflowClient().log_artifact(run_id, str(path), None if parent == "." else parent)
    plt.close(figure)


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log many metrics in batches (one store round trip per 1000)."""
    timestamp = int(time.time() * 1000)
    entries = [Metric(key, float(value), timestamp, step) for key, value in metrics.items()]
    client = MlflowClient()
    for start in range(0, len(entries), 1000):
        client.log_batch(run_id, metrics=entries[start : start + 1000])


def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    """Log params in batches; non-string values are written as JSON."""
    entries = [
        Param(key, value if isinstance(value, str) else json.dumps(value, default=str))
        for key, value in params.items()
    ]
    client = MlflowClient()
    for start in range(0, len(entries), 100):
        client.log_batch(run_id, params=entries[start : start + 100])
