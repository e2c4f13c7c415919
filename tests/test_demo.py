"""The README's main command, run for real: ``make demo`` on embedded defaults (a local MLflow
store under HAL_HOME, a local Prefect), then what MLflow recorded is read back."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from hal_core.settings import PROJECT_ROOT, HalSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STAGE_RUNS = {
    "validate_data",
    "derive_traits",
    "fit_reward",
    "train_local_judge",
    "rate_dialogues",
    "align",
    "evaluate",
}


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_runs_the_pipeline_end_to_end(tmp_path: Path, data_dir: Path) -> None:
    home = tmp_path / "hal_home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(HAL_HOME=str(home), HAL_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    env.pop("HAL_TRACKING_URI", None)
    started = time.monotonic()
    completed = subprocess.run(
        ["make", "demo"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=2400,
    )
    print(f"make demo: {time.monotonic() - started:.0f} s")
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "pipeline run" in completed.stdout

    # the store the demo used: its default under HAL_HOME (this process's MLFLOW_TRACKING_URI,
    # set by earlier tests, points elsewhere)
    settings = HalSettings(home=home, data_dir=data_dir, tracking_uri=f"sqlite:///{home}/mlflow.db")
    client = MlflowClient(settings.resolved_tracking_uri())
    experiment = client.get_experiment_by_name(settings.experiment_pipeline)
    [pipeline] = client.search_runs(
        [experiment.experiment_id], filter_string="attributes.run_name = 'hal_pipeline'"
    )
    assert pipeline.info.run_name == "hal_pipeline" and pipeline.info.status == "FINISHED"
    metrics = pipeline.data.metrics
    assert metrics["cv.accuracy.mean"] == pytest.approx(0.7747, abs=5e-4)
    assert metrics["stages.cached"] == 0
    assert metrics["pairs.n_pairs"] > 500 and metrics["dpo.rewards.margins"] > 0
    assert metrics["hl.gain"] == pytest.approx(4.18, abs=0.01)  # recorded epochs 10 vs 0
    children = [
        run
        for experiment in client.search_experiments()
        for run in client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{pipeline.info.run_id}'",
        )
    ]
    assert {run.info.run_name for run in children} >= STAGE_RUNS
    assert all(run.info.status == "FINISHED" for run in children)
