"""Everything a run leaves behind as text, for tests that scan it for a secret."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient


def recorded_texts(run_ids: list[str], download_to: Path, expected_artifact: str) -> list[str]:
    """MLflow params, tags and artifact files of ``run_ids`` (each must have logged
    ``expected_artifact``, so the scan is known to reach artifacts) and every Prefect log."""
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler

    client = MlflowClient()
    texts: list[str] = []
    for run_id in run_ids:
        run = client.get_run(run_id)
        texts += [f"{k}={v}" for k, v in {**run.data.params, **run.data.tags}.items()]
        folder = mlflow.artifacts.download_artifacts(
            run_id=run_id, dst_path=str(download_to / run_id)
        )
        files = [path for path in Path(folder).rglob("*") if path.is_file()]
        assert any(path.name == expected_artifact for path in files), (run_id, expected_artifact)
        texts += [path.read_bytes().decode("utf-8", "replace") for path in files]
    APILogHandler().flush()
    with get_client(sync_client=True) as prefect:
        offset = 0
        while batch := prefect.read_logs(limit=200, offset=offset):
            texts += [log.message for log in batch]
            offset += len(batch)
    assert offset > 0, "no Prefect log to scan"
    return texts
