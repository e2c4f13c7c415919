"""Reports shown in both UIs: a markdown file in the MLflow run, mirrored as a Prefect
markdown artifact of the flow run that wrote it."""

from __future__ import annotations

from mlflow.tracking import MlflowClient
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def publish_markdown(
    run_id: str, text: str, artifact_file: str, key: str, description: str
) -> None:
    """Log ``text`` as ``artifact_file`` in the MLflow run; inside a Prefect flow run, also as
    the markdown artifact ``key`` (outside one there is no run to attach it to)."""
    MlflowClient().log_text(run_id, text, artifact_file)
    if FlowRunContext.get() is not None:
        create_markdown_artifact(text, key=key, description=description)
