"""The README's main command, run for real: ``make demo`` on embedded defaults (a local MLflow
store under HAL_HOME, a local Prefect), then what MLflow recorded is read back.

The loop runs on the real SmolLM2-135M-Instruct at small sizes (``DEMO_ARGS``) so that the
suite stays under 30 minutes; the demo's own sizes are timed by ``bench/pipeline.py``.
"""

from __future__ import annotations

import math
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
    "generate",
    "rate_dialogues",
    "align",
    "evaluate",
}
SMALL = {
    "generate.persona_limit": 4,
    "generate.samples_per_persona": 3,
    "generate_test.persona_limit": 4,
    "align.recipe_overrides.num_train_epochs": 1,
    "fit_reward.stability.n_bootstraps": 10,
    "derived_reward.stability.n_bootstraps": 5,
}


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_runs_the_loop_end_to_end(tmp_path: Path, data_dir: Path) -> None:
    home = tmp_path / "hal_home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(HAL_HOME=str(home), HAL_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    env.pop("HAL_TRACKING_URI", None)
    demo_args = " ".join(f"--set {key}={value}" for key, value in SMALL.items())
    started = time.monotonic()
    completed = subprocess.run(
        ["make", "demo", f"DEMO_ARGS={demo_args}"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=2400,
    )
    print(f"make demo (small): {time.monotonic() - started:.0f} s")
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = completed.stdout
    assert "pipeline run" in report and "HL per epoch" in report
    assert "gain vs base:" in report and "second judge's gain:" in report
    assert "guards at epoch 1 vs base:" in report and "before:" in report and "after:" in report

    # the store the demo used: its default under HAL_HOME (this process's MLFLOW_TRACKING_URI,
    # set by earlier tests, points elsewhere)
    settings = HalSettings(home=home, data_dir=data_dir, tracking_uri=f"sqlite:///{home}/mlflow.db")
    store = settings.resolved_tracking_uri()
    client = MlflowClient(store, registry_uri=store)  # earlier tests set a process-wide registry
    experiment = client.get_experiment_by_name(settings.experiment_pipeline)
    [pipeline] = client.search_runs(
        [experiment.experiment_id], filter_string="attributes.run_name = 'hal_pipeline'"
    )
    assert pipeline.info.status == "FINISHED"
    metrics = pipeline.data.metrics
    assert metrics["cv.accuracy.mean"] == pytest.approx(0.7747, abs=5e-4)  # the paper's fit
    assert metrics["stages.cached"] == 0
    assert metrics["pairs.n_pairs"] >= 1 and math.isfinite(metrics["dpo.rewards.margins"])
    assert math.isfinite(metrics["hl.gain"]) and metrics["guards.passed"] in (0.0, 1.0)
    runs = [
        run
        for experiment in client.search_experiments()
        for run in client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{pipeline.info.run_id}'",
        )
    ]
    children = {run.info.run_name: run for run in runs}
    assert len(children) == len(runs), "two stage runs share a name"
    assert {run.data.tags["hal.stage"] for run in runs} >= STAGE_RUNS
    assert {"fit_reward:hal32q", "fit_reward:loop", "train_local_judge:doctor_visits",
            "generate:train", "generate:test:e0", "generate:test:e1"} <= set(children)  # fmt: skip
    assert all(run.info.status == "FINISHED" for run in children.values())

    # the policy it trained: HL per epoch, generated dialogues, examples, a registered version
    evaluation = children["evaluate"].info.run_id
    metric_keys = children["evaluate"].data.metrics
    [curve] = [key for key in metric_keys if key == "hl.mean" or key.endswith("/hl.mean")]
    epochs = [m.step for m in client.get_metric_history(evaluation, curve)]
    assert sorted(epochs) == [0, 1]
    artifacts = {item.path for item in client.list_artifacts(evaluation)}
    assert {"generated", "examples"} <= artifacts
    assert len(client.list_artifacts(evaluation, "generated")) == 2  # base and epoch 1
    [version] = client.search_model_versions("name = 'hal-policy'")
    assert version.run_id == evaluation
    training = [
        run
        for experiment in client.search_experiments()
        for run in client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{children['align'].info.run_id}'",
        )
    ]
    assert training and "train_loss" in training[0].data.metrics
