"""The production configuration of infra/compose.yaml, for real, without Docker.

PostgreSQL comes from Debian's packages (a cluster of its own in a temporary folder). The
Prefect server, the MLflow tracking server (PostgreSQL backend store, artifacts served through
the server from a folder standing in for the compose volume) and the CPU worker run the exact
commands and environment compose gives them (tests/servers/compose.py translates names and
ports only). A deployment of infra/prefect.yaml runs with custom parameters; the flow run, the
MLflow run, its metrics, model alias and an artifact fetched through the server's artifact proxy
are read back. Then both servers are killed with SIGKILL, started again on the same databases,
and everything is read again: nothing is lost.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from tests.servers.compose import Here, compose, env_file
from tests.servers.postgres import Postgres
from tests.servers.processes import (
    Service,
    base_env,
    free_port,
    require_module,
    start,
    wait_until,
)

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
DEPLOYMENT = "weekly-refit"  # flows/fit_reward.py:fit_reward
CUSTOM = {"params": {"reward": {"paper_cv_seeds": [57, 14], "cv_folds": 5}, "alias": "production"}}


def healthy(url: str) -> bool:
    return httpx.get(url, timeout=5).status_code == 200


def start_servers(here: Here, env: dict[str, str], folder: Path, round_: int) -> list[Service]:
    services = [
        start(f"{name}-{round_}", here.command(name), env | here.environment(name), folder)
        for name in ("prefect-server", "mlflow")
    ]
    prefect_api = here.environment("worker")["PREFECT_API_URL"]
    mlflow_url = here.environment("worker")["MLFLOW_TRACKING_URI"]
    wait_until(lambda: healthy(f"{prefect_api}/health"), 600, "the Prefect server", services)
    wait_until(lambda: healthy(f"{mlflow_url}/health"), 600, "the MLflow server", services)
    return services


def read_back(prefect: httpx.Client, mlflow: httpx.Client, flow_run_id: str) -> dict:
    """Everything the run left in both servers, as plain data."""
    flow_run = prefect.get(f"/flow_runs/{flow_run_id}").json()
    (deployment,) = prefect.post(
        "/deployments/filter", json={"deployments": {"name": {"any_": [DEPLOYMENT]}}}
    ).json()
    experiment = mlflow.get(
        "/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": "hal-pipeline"}
    ).json()["experiment"]
    (run,) = mlflow.post(
        "/api/2.0/mlflow/runs/search",
        json={
            "experiment_ids": [experiment["experiment_id"]],
            "filter": f"tags.`prefect.flow_run_id` = '{flow_run_id}'",
        },
    ).json()["runs"]
    run_id = run["info"]["run_id"]
    alias = mlflow.get(
        "/api/2.0/mlflow/registered-models/alias",
        params={"name": "hal-reward", "alias": "production"},
    ).json()["model_version"]
    # Through the server's artifact proxy: the client never sees the store behind it.
    artifact_path = urlparse(run["info"]["artifact_uri"]).path.strip("/")
    reward = mlflow.get(f"/api/2.0/mlflow-artifacts/artifacts/{artifact_path}/reward.json")
    assert reward.status_code == 200, reward.text
    return {
        "flow_run": {k: flow_run[k] for k in ("state_type", "parameters", "deployment_id")},
        "deployment": {k: deployment[k] for k in ("id", "entrypoint", "work_pool_name")},
        "schedules": [s["schedule"]["cron"] for s in deployment["schedules"]],
        "run_id": run_id,
        "status": run["info"]["status"],
        "artifact_uri": run["info"]["artifact_uri"],
        "params": {p["key"]: p["value"] for p in run["data"]["params"]},
        "metrics": {m["key"]: m["value"] for m in run["data"]["metrics"]},
        "model_version": (alias["version"], alias["run_id"]),
        "reward.json": reward.content,
    }


@pytest.mark.slow
@pytest.mark.integration
def test_production_stack_runs_a_deployment_and_loses_nothing_when_servers_are_killed(
    tmp_path: Path, data_dir: Path
) -> None:
    require_module("asyncpg", "Prefect's PostgreSQL driver: pip install asyncpg")
    require_module("psycopg", "MLflow's PostgreSQL driver: pip install 'psycopg[binary]'")
    timings: dict[str, float] = {}
    clock = time.monotonic()
    variables = env_file() | {"HAL_DATA_DIR": str(data_dir)}
    postgres = Postgres.create(variables["POSTGRES_USER"])
    variables["POSTGRES_PASSWORD"] = postgres.password
    services: list[Service] = []
    try:
        postgres.start()
        image = compose()["services"]["prefect-db"]["image"]  # postgres:15-alpine
        major = postgres.sql("SHOW server_version_num")[:-4]
        assert image.split(":")[1].startswith(f"{major}-"), f"compose runs {image}, test {major}"
        for database in (variables["PREFECT_DB"], variables["MLFLOW_DB"]):
            postgres.sql(f'CREATE DATABASE "{database}"')
        timings["postgres"] = time.monotonic() - clock

        local = f"127.0.0.1:{postgres.port}"
        prefect_port, mlflow_port = str(free_port()), str(free_port())
        here = Here(
            variables,
            addresses={
                "prefect-db:5432": local,
                "mlflow-db:5432": local,
                "prefect-server:4200": f"127.0.0.1:{prefect_port}",
                "mlflow:5000": f"127.0.0.1:{mlflow_port}",
            },
            ports={"4200": prefect_port, "5000": mlflow_port},
            folders={"mlflow-artifacts": tmp_path / "artifacts", "hal-home": tmp_path / "hal"},
        )
        env = base_env(tmp_path, data_dir)
        services = start_servers(here, env, tmp_path, 1)
        timings["servers"] = time.monotonic() - clock

        # The compose worker (`hal serve --api-url ... --pool hal-cpu`), applying one deployment.
        worker_command = [*here.command("worker"), "--deployment", DEPLOYMENT]
        worker = start("worker", worker_command, env | here.environment("worker"), tmp_path)
        services.append(worker)
        prefect_api = here.environment("worker")["PREFECT_API_URL"]
        prefect = httpx.Client(base_url=prefect_api, timeout=30)
        mlflow = httpx.Client(
            base_url=here.environment("worker")["MLFLOW_TRACKING_URI"], timeout=60
        )

        def worker_ready() -> bool:
            workers = prefect.post("/work_pools/hal-cpu/workers/filter", json={})
            deployments = prefect.post("/deployments/filter", json={}).json()
            return workers.status_code == 200 and bool(workers.json()) and bool(deployments)

        wait_until(worker_ready, 600, "the worker and its deployment", services)
        timings["worker"] = time.monotonic() - clock

        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
            flow_run = run_deployment(
                f"fit_reward/{DEPLOYMENT}", parameters=CUSTOM, timeout=0, as_subflow=False
            )
        flow_run_id = str(flow_run.id)
        wait_until(
            lambda: prefect.get(f"/flow_runs/{flow_run_id}").json()["state_type"] in TERMINAL,
            600,
            "the flow run",
            services,
        )
        timings["flow run"] = time.monotonic() - clock
        before = read_back(prefect, mlflow, flow_run_id)
        assert before["flow_run"]["state_type"] == "COMPLETED", worker.tail(80)
        assert before["flow_run"]["parameters"] == CUSTOM
        assert before["flow_run"]["deployment_id"] == before["deployment"]["id"]
        assert before["schedules"] == ["0 3 * * 1"]
        assert before["status"] == "FINISHED"
        assert (before["params"]["paper_cv_seeds"], before["params"]["cv_folds"]) == (
            "[57, 14]",
            "5",
        )
        assert 0.7 < before["metrics"]["cv.accuracy.mean"] < 0.85
        assert before["metrics"]["n_selected"] == 16
        assert before["model_version"][1] == before["run_id"]
        # The artifact went through the proxy into the store, and is the reward the flow saved.
        assert before["artifact_uri"].startswith("mlflow-artifacts:")
        in_store = urlparse(before["artifact_uri"]).path.strip("/")
        stored = tmp_path / "artifacts" / in_store / "reward.json"
        assert stored.read_bytes() == before["reward.json"]
        saved = tmp_path / "hal" / "rewards" / before["run_id"] / "reward.json"
        assert saved.read_bytes() == before["reward.json"]

        # SIGKILL both servers (no shutdown code runs), then start them again.
        worker.stop()
        for service in services[:2]:
            service.kill()
        assert not any(s.process.poll() is None for s in services)
        services = start_servers(here, env, tmp_path, 2)
        timings["restart"] = time.monotonic() - clock
        after = read_back(prefect, mlflow, flow_run_id)
        assert after == before
    finally:
        for service in reversed(services):
            service.stop()
        postgres.stop()
        postgres.remove()
    print("production stack, seconds since start: "
          + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))  # fmt: skip
