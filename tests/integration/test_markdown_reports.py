"""A markdown report lands in both UIs: the MLflow run's file and, inside a flow run only, the
Prefect markdown artifact of that flow run."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.integration

REPORT = "# Report\n\n| a | b |\n|---|---|\n| 1 | 0.25 |\n"


def artifacts_with_key(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    key_filter = ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=key_filter)


def test_a_report_is_an_mlflow_file_and_the_flow_runs_markdown_artifact(
    settings, tmp_path: Path
) -> None:
    import mlflow
    from prefect import flow

    from tasks.reports import publish_markdown
    from tasks.tracking import configure_tracking, ensure_experiment

    configure_tracking(settings)
    experiment = ensure_experiment("hal-markdown-report-test", settings)
    with mlflow.start_run(experiment_id=experiment) as run:
        run_id = run.info.run_id

    @flow(name="report_test")
    def report_test() -> str:
        publish_markdown(run_id, REPORT, "reports/report.md", "report-test", "a test report")
        from prefect.runtime import flow_run

        return flow_run.id

    flow_run_id = report_test()
    client = MlflowClient(settings.resolved_tracking_uri())
    folder = Path(client.download_artifacts(run_id, "reports", str(tmp_path)))
    assert (folder / "report.md").read_text() == REPORT
    [artifact] = artifacts_with_key("report-test")
    assert artifact.type == "markdown" and artifact.data == REPORT
    assert str(artifact.flow_run_id) == str(flow_run_id)

    # outside a flow run the MLflow file is still written; no Prefect artifact is made
    publish_markdown.fn(run_id, REPORT + "\nagain\n", "reports/outside.md", "report-test", "x")
    assert len(artifacts_with_key("report-test")) == 1
    outside = Path(client.download_artifacts(run_id, "reports/outside.md", str(tmp_path)))
    assert outside.read_text().endswith("again\n")
