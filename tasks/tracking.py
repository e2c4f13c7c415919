"""MLflow conventions shared by every stage: where runs go, how stages nest, what inputs were."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any

import mlflow
import psutil
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient
from pydantic import Field

from hal_core import run_description
from hal_core.settings import (
    TEMPORARY_PREFECT_API,
    HalSettings,
    apply_process_defaults,
    sqlite_file,
    store_lock,
)
from hal_core.tables import file_sha256

ParentRunId = Annotated[
    str | None, Field(description="MLflow run to nest under (set by the pipeline).")
]
"""A stage's ``parent_run_id`` parameter: ``parent_run_id: ParentRunId = None``."""

RunName = Annotated[
    str | None,
    Field(
        description="The MLflow run's name, `stage:role` (set by the pipeline); None = the stage."
    ),
]
"""A stage's ``run_name`` parameter: ``run_name: Internal[RunName] = None``."""

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
CLASSIC_ML_KIND = "custom_model_development"
"""MLflow 3's UI opens an experiment of this kind on its runs, not on GenAI traces."""
NOTE_TAG = "mlflow.note.content"
"""The description MLflow's UI shows (markdown) on an experiment's or a run's page."""


_PREPARED_STORES: set[str] = set()


def configure_tracking(settings: HalSettings) -> str:
    """Point MLflow at the configured store, created or migrated if need be, and return its URI."""
    uri = settings.resolved_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    prepare_store(uri)
    return uri


def prepare_store(uri: str) -> None:
    """Create or migrate a SQLite store under its file lock, once per process.

    MLflow builds the schema of a new SQLite store when a client first opens it, without a
    lock: two commands starting at once on a new HAL_HOME both ran the migrations, and one
    crashed (``table ... already exists``, or alembic's ``expected to match one row``).
    """
    path = sqlite_file(uri)
    if path is None or uri in _PREPARED_STORES:
        return
    with store_lock(path):
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)  # opens the tracking store: builds the schema
        client.search_registered_models(max_results=1)  # the registry store checks it too
    _PREPARED_STORES.add(uri)


def ensure_experiment(name: str, settings: HalSettings) -> str:
    """The experiment's id, created with artifacts under HAL_HOME when the store is local, and
    set up as a classic ML experiment with a description (also one created before them)."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        experiment_id = _create_experiment(client, name, settings)
        experiment = client.get_experiment(experiment_id)
    describe_experiment(client, experiment, settings)
    return experiment.experiment_id


def describe_experiment(client: MlflowClient, experiment: Any, settings: HalSettings) -> None:
    """Set the experiment's kind (classic ML) and its description, where they are missing."""
    fields = [f for f in HalSettings.model_fields if f.startswith("experiment_")]
    field = next((f for f in fields if getattr(settings, f) == experiment.name), None)
    wanted = {
        EXPERIMENT_KIND_TAG: CLASSIC_ML_KIND,
        NOTE_TAG: run_description.experiment_description(field),
    }
    for key, value in wanted.items():
        if key not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, key, value)


def _create_experiment(client: MlflowClient, name: str, settings: HalSettings) -> str:
    uri = settings.resolved_tracking_uri()
    artifact_location = None
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        artifact_location = (settings.artifact_root / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException as error:  # another command created it since we looked
        created = client.get_experiment_by_name(name)
        if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS) or created is None:
            raise
        return created.experiment_id


@contextmanager
def stage_run(
    stage: str,
    experiment: str,
    settings: HalSettings,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    run_name: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run of a stage, named ``run_name`` (the pipeline's ``stage:role``) or after
    the stage; nested under ``parent_run_id`` when given.

    The run is tagged with its stage, its process and, inside a Prefect flow run, that flow
    run's id and UI link; the flow run gets a link artifact back to the MLflow run. Runs of
    this experiment left RUNNING by a process that no longer exists are closed as KILLED first.
    On exit the run gets its description: headline figures, decision, Prefect link.
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
        run_name=run_name or stage,
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        nested=parent_run_id is not None,
        tags={**run_tags(stage, settings), **dict(tags or {})},
    ) as run:
        link_prefect_to_mlflow(run, settings)
        try:
            yield run
        except BaseException:
            with suppress(MlflowException):  # the stage's own error is the one to see
                describe_run(run.info.run_id)
            raise
        describe_run(run.info.run_id)


def prefect_api_is_temporary() -> bool:
    """Whether this process's Prefect API goes when the command ends: none configured
    (Prefect's ephemeral mode) or the command's own local server (hal_cli's ``prefect_api``)."""
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    return not api_url or os.environ.get(TEMPORARY_PREFECT_API) == api_url


def flow_run_url(flow_run_id: str, settings: HalSettings) -> tuple[str | None, bool]:
    """The flow run's page in a Prefect UI that will still answer, and whether its API was
    temporary (then the page is in `hal serve`'s UI on this HAL_HOME: same Prefect home)."""
    from prefect.settings import PREFECT_UI_URL

    if prefect_api_is_temporary():
        return run_description.flow_run_url(settings.prefect_ui_url, flow_run_id), True
    ui_url = PREFECT_UI_URL.value()
    return (run_description.flow_run_url(ui_url, flow_run_id) if ui_url else None), False


def run_tags(stage: str, settings: HalSettings) -> dict[str, str]:
    """Stage, process and, inside a Prefect flow run, its id and UI link."""
    from prefect.runtime import flow_run

    tags = {"hal.stage": stage, "hal.host": socket.gethostname(), "hal.pid": str(os.getpid())}
    if flow_run.id:
        tags["prefect.flow_run_id"] = str(flow_run.id)
        tags["prefect.flow_run_name"] = str(flow_run.name)
        url, temporary = flow_run_url(str(flow_run.id), settings)
        if url:
            tags["prefect.flow_run_url"] = url
        if temporary:
            tags["hal.prefect_api"] = "temporary"
    return tags


def describe_run(run_id: str) -> str:
    """Write the run's description (``mlflow.note.content``) from what it logged: the
    stage's headline figures, the decision if any, the link to its Prefect flow run."""
    client = MlflowClient()
    run = client.get_run(run_id)
    tags, metrics = run.data.tags, run.data.metrics
    decision = tags.get("hal.promotion")
    if decision is None and "promotion.promote" in metrics:
        decision = "policy promoted" if metrics["promotion.promote"] else "policy not promoted"
    link = None
    if tags.get("prefect.flow_run_url"):
        link = run_description.prefect_link(
            tags.get("prefect.flow_run_name", tags.get("prefect.flow_run_id", "")),
            tags["prefect.flow_run_url"],
            temporary=tags.get("hal.prefect_api") == "temporary",
        )
    stage = tags.get("hal.stage", run.info.run_name)
    text = run_description.run_description(stage, run.info.run_name, metrics, decision, link)
    client.set_tag(run_id, NOTE_TAG, text)
    return text


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
