"""`hal serve` and a real MLflow server: a deployment run with custom parameters completes.

`hal serve` runs ``prefect server start --host 127.0.0.1 --port <free>``, creates the process
work pools, applies ``infra/prefect.yaml`` and starts a worker; the flows log to a real
``mlflow server`` (SQLite backend, local artifact root). The run is triggered through the
Prefect API and its results are read back through both servers' REST APIs.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.servers.processes import Servers, wait_until

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
DEPLOYMENT = "weekly-refit"  # flows/fit_reward.py:fit_reward in infra/prefect.yaml
CUSTOM = {"params": {"reward": {"paper_cv_seeds": [57], "cv_folds": 5}, "alias": "server-test"}}


@pytest.mark.slow
@pytest.mark.integration
def test_deployment_run_with_custom_parameters_completes_against_real_servers(
    servers: Servers,
) -> None:
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    serve = servers.serve
    prefect = httpx.Client(base_url=servers.prefect_api, timeout=30)

    def deployment() -> dict | None:
        found = prefect.post(
            "/deployments/filter", json={"deployments": {"name": {"any_": [DEPLOYMENT]}}}
        ).json()
        return found[0] if found else None

    def worker_online() -> bool:
        workers = prefect.post("/work_pools/hal-cpu/workers/filter", json={})
        return workers.status_code == 200 and any(w["status"] == "ONLINE" for w in workers.json())

    wait_until(lambda: deployment() is not None, 300, "the deployment", [serve])
    wait_until(worker_online, 120, "a worker on hal-cpu", [serve])
    ready_s = time.monotonic() - servers.started_s
    spec = deployment()
    assert spec["entrypoint"] == "flows/fit_reward.py:fit_reward"
    assert spec["work_pool_name"] == "hal-cpu"
    assert [s["schedule"]["cron"] for s in spec["schedules"]] == ["0 3 * * 1"]

    with temporary_settings(updates={PREFECT_API_URL: servers.prefect_api}):
        flow_run = run_deployment(spec["id"], parameters=CUSTOM, timeout=0, as_subflow=False)

    state: dict = {}

    def finished() -> bool:
        state.update(prefect.get(f"/flow_runs/{flow_run.id}").json())
        return state["state_type"] in TERMINAL

    wait_until(finished, 420, "the flow run", [serve])
    assert state["state_type"] == "COMPLETED", f"{state['state']}\n{serve.tail(80)}"
    assert state["parameters"] == CUSTOM
    assert state["work_pool_name"] == "hal-cpu"

    mlflow = httpx.Client(base_url=f"{servers.mlflow_url}/api/2.0/mlflow", timeout=30)
    experiment = mlflow.get(
        "/experiments/get-by-name", params={"experiment_name": "hal-reward"}
    ).json()["experiment"]
    runs = mlflow.post(
        "/runs/search",
        json={
            "experiment_ids": [experiment["experiment_id"]],
            "filter": "attributes.run_name = 'fit_reward'",
        },
    ).json()["runs"]
    assert len(runs) == 1
    run = runs[0]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    # The custom parameters reached the flow run in the worker's subprocess.
    assert (params["paper_cv_seeds"], params["cv_folds"]) == ("[57]", "5")
    assert run["info"]["status"] == "FINISHED"
    assert 0.7 < metrics["cv.accuracy.mean"] < 0.85
    assert metrics["n_selected"] == 16
    alias = mlflow.get(
        "/registered-models/alias", params={"name": "hal-reward", "alias": "server-test"}
    ).json()["model_version"]
    assert alias["run_id"] == run["info"]["run_id"]
    total_s = time.monotonic() - servers.started_s
    print(
        f"real servers: ready in {ready_s:.0f} s, flow run {flow_run.id} completed "
        f"(cv.accuracy.mean {metrics['cv.accuracy.mean']:.4f}), {total_s:.0f} s in total"
    )
