"""MLflow runs as users find them: linked to their Prefect flow run, never left RUNNING."""

from __future__ import annotations

import os
import subprocess
import sys
from uuid import UUID

import pytest
from mlflow.tracking import MlflowClient
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from hal_core.settings import HalSettings, HomeNotWritableError
from tasks import tracking

pytestmark = pytest.mark.integration


def test_a_flow_run_and_its_mlflow_run_link_to_each_other(settings: HalSettings):
    @flow(name="linked-stage")
    def linked() -> tuple[str, str]:
        from prefect.runtime import flow_run

        with tracking.stage_run("linked-stage", "hal-test-links", settings) as run:
            return run.info.run_id, str(flow_run.id)

    run_id, flow_run_id = linked()
    run = MlflowClient().get_run(run_id)
    assert run.data.tags["prefect.flow_run_id"] == flow_run_id
    assert run.data.tags["hal.stage"] == "linked-stage"
    assert run.data.tags["hal.mlflow_run_url"].endswith(f"/runs/{run_id}")
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(flow_run_id)])
            )
        )
    links = [a for a in artifacts if a.type == "link"]
    assert len(links) == 1 and run_id in str(links[0].data)


def test_a_run_left_running_by_a_killed_process_is_closed_by_the_next(settings: HalSettings):
    script = (
        "import os, signal\n"
        "from hal_core.settings import HalSettings\n"
        "from tasks import tracking\n"
        "with tracking.stage_run('doomed', 'hal-test-stale', HalSettings()) as run:\n"
        "    print(run.info.run_id, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "HAL_HOME": str(settings.home), "HAL_DATA_DIR": str(settings.data_dir)}
    killed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert killed.returncode == -9
    stale_id = killed.stdout.split()[0]
    tracking.configure_tracking(settings)
    client = MlflowClient()
    assert client.get_run(stale_id).info.status == "RUNNING"
    with tracking.stage_run("next", "hal-test-stale", settings):
        pass
    stale = client.get_run(stale_id)
    assert stale.info.status == "KILLED"
    assert "is gone" in stale.data.tags["hal.closed_reason"]


def test_a_live_run_of_another_process_is_left_alone(settings: HalSettings):
    with tracking.stage_run("outer", "hal-test-live", settings) as outer:
        with tracking.stage_run("inner", "hal-test-live", settings, outer.info.run_id):
            pass
        assert MlflowClient().get_run(outer.info.run_id).info.status == "RUNNING"


def test_a_home_that_cannot_be_written_is_a_clear_error_naming_the_folder(tmp_path):
    with pytest.raises(HomeNotWritableError, match=r"HAL_HOME /proc/hal-home: cannot create it"):
        HalSettings(home="/proc/hal-home").resolved_tracking_uri()
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o500)
    try:
        if os.geteuid() != 0:  # root writes anywhere: the /proc case above stands for it
            with pytest.raises(HomeNotWritableError, match=rf"HAL_HOME {home} is not writable"):
                HalSettings(home=home).resolved_tracking_uri()
    finally:
        home.chmod(0o700)
