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

from hal_core.settings import HalSettings
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
    links = [a for a in artifacts if run_id in str(a.data)]  # stored as a markdown link
    assert len(links) == 1


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


@pytest.mark.slow
def test_a_killed_command_leaves_no_server_and_its_run_is_closed_next_time(
    settings: HalSettings, tmp_path
):
    """SIGKILL of `hal rate` on its own local Prefect API: the API server dies with it, and
    the next command marks the killed MLflow run KILLED."""
    import signal
    import time

    import pandas as pd
    import psutil

    from tests.fakes.openai_server import FakeOpenAIServer

    dialogues = tmp_path / "dialogues.csv"
    table = pd.read_csv(settings.data_path("turing/conversations_full.csv")).head(40)
    table[["conversation_id", "conversation"]].to_csv(dialogues, index=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_"))}
    env |= {"HAL_HOME": str(settings.home), "HAL_DATA_DIR": str(settings.data_dir),
            "HAL_JUDGE_API_KEY": "sk-test-kill"}  # fmt: skip
    with FakeOpenAIServer(latency_s=1.0, api_key="sk-test-kill") as server:
        command = [sys.executable, "-m", "hal_cli", "rate", str(dialogues),
                   "--text-column", "conversation", "--base-url", server.base_url,
                   "--model", "fake-judge", "--concurrency", "1",
                   "--cache", str(tmp_path / "cache.sqlite")]  # fmt: skip
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 300
        while len(server.records) < 2:
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        api_servers = [
            child
            for child in psutil.Process(process.pid).children(recursive=True)
            if "prefect.server.api.server:create_app" in " ".join(child.cmdline())
        ]
        assert len(api_servers) == 1
        process.send_signal(signal.SIGKILL)
        process.wait()
        _, alive = psutil.wait_procs(api_servers, timeout=20)
        assert not alive, "the command's Prefect API outlived it"

    tracking.configure_tracking(settings)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(settings.experiment_rating)
    [killed] = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`hal.pid` = '{process.pid}'"
    )
    assert killed.info.status == "RUNNING"
    with tracking.stage_run("next", settings.experiment_rating, settings):
        pass
    assert client.get_run(killed.info.run_id).info.status == "KILLED"


def test_a_stage_run_is_named_for_its_role_and_describes_itself(settings: HalSettings):
    @flow(name="fit_reward")
    def described() -> tuple[str, str]:
        from prefect.runtime import flow_run

        with tracking.stage_run(
            "fit_reward", "hal-test-described", settings, run_name="fit_reward:loop"
        ) as run:
            tracking.log_metrics(run.info.run_id, {"cv.accuracy.mean": 0.774712, "n_selected": 16})
            tracking.tag_run(run.info.run_id, {"hal.promotion": "hal-reward v2 champion"})
            return run.info.run_id, str(flow_run.id)

    run_id, flow_run_id = described()
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.run_name == "fit_reward:loop"
    assert run.data.tags["hal.stage"] == "fit_reward"  # queries by stage still find it
    description = run.data.tags["mlflow.note.content"]
    assert "| `cv.accuracy.mean` | 0.7747 |" in description
    assert "| `n_selected` | 16 |" in description
    assert "Decision: hal-reward v2 champion" in description
    url = run.data.tags["prefect.flow_run_url"]
    assert url.endswith(f"/runs/flow-run/{flow_run_id}")
    assert f"]({url})" in description and "temporary" not in description
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "stage:role" in experiment.tags["mlflow.note.content"]


def test_a_run_on_a_temporary_prefect_api_links_to_hal_serve(
    settings: HalSettings, monkeypatch: pytest.MonkeyPatch
):
    from prefect.settings import PREFECT_API_URL

    from hal_core.settings import TEMPORARY_PREFECT_API

    monkeypatch.setenv(TEMPORARY_PREFECT_API, PREFECT_API_URL.value())  # as `hal_cli` marks it

    @flow(name="generate")
    def on_temporary_api() -> tuple[str, str]:
        from prefect.runtime import flow_run

        with tracking.stage_run("generate", "hal-test-described", settings) as run:
            return run.info.run_id, str(flow_run.id)

    run_id, flow_run_id = on_temporary_api()
    run = MlflowClient().get_run(run_id)
    assert run.info.run_name == "generate"  # alone, a stage keeps its plain name
    link = f"({settings.prefect_ui_url}/runs/flow-run/{flow_run_id})"
    description = run.data.tags["mlflow.note.content"]
    assert link in description
    assert "ran on a temporary Prefect API; start `hal serve` to see it" in description
    assert run.data.tags["prefect.flow_run_url"] == link.strip("()")


def test_an_experiment_made_before_gets_its_kind_and_description(settings: HalSettings):
    tracking.configure_tracking(settings)
    client = MlflowClient()
    experiment_id = client.create_experiment("hal-test-old-experiment")
    client.set_experiment_tag(experiment_id, "mlflow.note.content", "kept as written")
    assert tracking.ensure_experiment("hal-test-old-experiment", settings) == experiment_id
    tags = client.get_experiment(experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags["mlflow.note.content"] == "kept as written"
