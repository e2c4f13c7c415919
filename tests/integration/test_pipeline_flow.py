"""The end-to-end flow nests every stage run under its own and skips unchanged stages."""

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from flows.pipeline import PipelineParams, hal_pipeline

pytestmark = pytest.mark.integration

SMALL = {
    "stages": ["validate_data", "fit_reward"],
    "validate_data": {"datasets": {"turing/ratings32_gpt-5.csv": "turing_ratings32"}},
    "fit_reward": {
        "reward": {"paper_cv_seeds": [57, 14], "cv_folds": 5},
        "stability": {"n_bootstraps": 5},
        "cross_judge_files": [],
        "alias": "pipeline-test",
    },
}


def test_second_run_with_nothing_changed_skips_every_stage(settings):
    first = hal_pipeline(PipelineParams(**SMALL))
    assert first.cached == []
    assert set(first.stages) == {"validate_data", "fit_reward"}
    assert first.metrics["n_selected"] == 16

    mlflow.set_tracking_uri(settings.resolved_tracking_uri())
    client = MlflowClient()
    parent = client.get_run(first.run_id)
    assert parent.info.run_name == "hal_pipeline"
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{first.run_id}'",
    )
    names = {run.info.run_name: run.data.tags["hal.stage"] for run in children}
    assert names == {"fit_reward:hal32q": "fit_reward", "validate_data": "validate_data"}
    accuracy = first.metrics["cv.accuracy.mean"]
    assert parent.data.metrics["cv.accuracy.mean"] == pytest.approx(accuracy, abs=1e-12)
    [reward_run] = [run for run in children if run.info.run_name == "fit_reward:hal32q"]
    description = reward_run.data.tags["mlflow.note.content"]
    assert description.startswith("**fit_reward:hal32q**")
    assert f"| `cv.accuracy.mean` | {accuracy:.4g} |" in description
    flow_run_id = reward_run.data.tags["prefect.flow_run_id"]
    assert f"/runs/flow-run/{flow_run_id})" in description
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "pipeline" in experiment.tags["mlflow.note.content"]

    second = hal_pipeline(PipelineParams(**SMALL))
    assert sorted(second.cached) == sorted(first.stages)
    assert second.stages["fit_reward"]["run_id"] == first.stages["fit_reward"]["run_id"]
    rerun = client.get_run(second.run_id)
    assert rerun.data.params["stage.fit_reward.cached_from"] == first.stages["fit_reward"]["run_id"]

    changed = dict(SMALL, fit_reward={**SMALL["fit_reward"], "alias": "pipeline-test-2"})
    third = hal_pipeline(PipelineParams(**changed))
    assert "fit_reward" not in third.cached and "validate_data" in third.cached
