"""The ``weekly-refit`` deployment of infra/prefect.yaml run again and again under ``hal serve``.

A second refit used to fail in ``promote_reward`` (the champion's version came back from the
registry as an int). Three deployment runs go through the Prefect server and the hal-cpu
process worker, as the UI's quick run and the Monday schedule start them: a weak refit (t01
only) that becomes champion because none exists, a run with the deployment's own parameters
(the schedule's run) that beats it and takes @champion, and the weak refit again, which is
registered as challenger only. Every run's MLflow run is read back from the MLflow server: in
the experiment of the stage's runs (hal-pipeline), with the version it registered.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers.conftest import Served, serving, wait_for_flow_run

pytestmark = [pytest.mark.slow, pytest.mark.integration]

DEPLOYMENT = "weekly-refit"
MODEL = "hal-reward"
FAST = {"reward": {"paper_cv_seeds": [57]}, "stability": {"n_bootstraps": 5}}
WEAK = {"params": {"trait_ids": ["t01"], **FAST}}  # paired accuracy ~0.52 on the check set


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Served]:
    """``hal serve --deployment weekly-refit`` on free ports (no UI: runs go through the API)."""
    home = tmp_path_factory.mktemp("weekly-refit")
    with serving(home, data_dir, ["--pool", "hal-cpu", "--deployment", DEPLOYMENT]) as served:
        yield served


def run_refit(served: Served, parameters: dict | None) -> dict:
    """One run of the deployment through the API, waited for; its final flow run."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    prefect = httpx.Client(base_url=served.prefect_api, timeout=30)
    (spec,) = prefect.post(
        "/deployments/filter", json={"deployments": {"name": {"any_": [DEPLOYMENT]}}}
    ).json()
    with temporary_settings(updates={PREFECT_API_URL: served.prefect_api}):
        flow_run = run_deployment(spec["id"], parameters=parameters, timeout=0, as_subflow=False)
    return wait_for_flow_run(prefect, str(flow_run.id), served)


@pytest.fixture(scope="module")
def refits(served: Served) -> list[dict]:
    """Three runs in order, each with the registry's aliases right after it."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=served.mlflow_url, registry_uri=served.mlflow_url)
    done = []
    for parameters in (WEAK, None, WEAK):
        flow_run = run_refit(served, parameters)
        champion = client.get_model_version_by_alias(MODEL, "champion")
        challenger = client.get_model_version_by_alias(MODEL, "challenger")
        done.append(
            {"flow_run": flow_run, "holders": (str(champion.version), str(challenger.version))}
        )
    return done


def test_every_refit_completes_and_champion_moves_only_by_the_rule(
    served: Served, refits: list[dict]
) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=served.mlflow_url, registry_uri=served.mlflow_url)
    # (@champion, @challenger) after each run: first fit; a better refit; a worse one
    assert [r["holders"] for r in refits] == [("1", "1"), ("2", "2"), ("2", "3")]
    assert refits[1]["flow_run"]["parameters"] == {}  # the deployment's own: the schedule's run

    pipeline = client.get_experiment_by_name("hal-pipeline")
    assert pipeline is not None
    assert client.get_experiment_by_name("hal-reward") is None  # no experiment of its own
    for number, refit in enumerate(refits, 1):
        (run,) = client.search_runs(
            [pipeline.experiment_id],
            filter_string=f"tags.`prefect.flow_run_id` = '{refit['flow_run']['id']}'",
        )
        assert run.info.run_name == "fit_reward" and run.info.status == "FINISHED"
        version = client.get_model_version(MODEL, str(number))
        assert version.run_id == run.info.run_id
        assert run.data.tags["hal.promotion"].startswith(f"{MODEL} v{number} ")
        refit["version"] = version

    tags = [r["version"].tags["promotion"] for r in refits]
    assert tags[0].startswith("promoted to @champion: no champion yet")
    assert tags[1].startswith("promoted to @champion: challenger paired accuracy 0.7")
    assert "is at least as good as the champion's 0.5" in tags[1] and "(v1)" in tags[1]
    assert tags[2].startswith("kept v2 as @champion: challenger paired accuracy 0.5")
    assert "is worse than the champion's 0.7" in tags[2] and "(v2)" in tags[2]
    assert [r["version"].tags["reward_kind"] for r in refits] == ["linear"] * 3
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3]  # one version per run
