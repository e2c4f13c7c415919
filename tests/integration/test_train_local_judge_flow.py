"""The train_local_judge flow on HAL16Q through the CLI, read back from MLflow; the registered
pyfunc loads and rates in a fresh process with no network.

To stay quick it trains on the epoch-00 files only (six folders: 100 dialogues rated five
times plus 100 rated once). The accuracy targets on all of aligned_outputs are asserted in
tests/unit/test_local_judge.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from hal_core.local_judge import LocalJudge
from hal_core.settings import HalSettings

pytestmark = pytest.mark.integration

FRESH_PROCESS = """
import json, sys
import mlflow, pandas as pd
mlflow.set_tracking_uri(sys.argv[1]); mlflow.set_registry_uri(sys.argv[1])
model = mlflow.pyfunc.load_model("models:/hal-judge-local@hal16q")
frame = pd.read_json(sys.argv[2], orient="records")
out = model.predict(frame)
print("RESULT" + json.dumps({"metadata": model.metadata.metadata,
                             "out": out.to_dict(orient="list")}))
"""


@pytest.fixture(scope="module")
def trained(hal_home: Path, data_dir: Path):
    from flows.cli import app

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HAL_HOME", str(hal_home))
        patch.setenv("HAL_DATA_DIR", str(data_dir))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("HAL_TRACKING_URI", raising=False)
        recipe = hal_home / "train_local_judge_test.yaml"
        recipe.write_text(
            "hal16q_ratings_glob: aligned_outputs/*/samples_epoch_00_scored_gpt-5.csv\n"
            "style_only_baseline: false\n"
        )
        invoked = CliRunner().invoke(
            app, ["train-local-judge", "--questionnaire", "hal16q", "--recipe", str(recipe)]
        )
        assert invoked.exit_code == 0, invoked.output
        yield json.loads(invoked.stdout[invoked.stdout.index("{") :])


@pytest.mark.slow
def test_metrics_ceiling_tables_and_registry_entry_are_logged(trained, settings: HalSettings):
    client = MlflowClient(settings.resolved_tracking_uri())
    run = client.get_run(trained["run_id"])
    assert run.info.run_name == "train_local_judge"
    assert client.get_experiment(run.info.experiment_id).name == settings.experiment_judge
    metrics = run.data.metrics
    assert metrics["n_train"] == 200 and metrics["n_unparseable"] == 0
    assert metrics["cv.hl.pearson"] > 0.6 and metrics["cv.hl.n_pairs"] > 20
    # the LLM judge against its own re-ratings (five folders, 100 dialogues at epoch 0)
    assert metrics["ceiling.hl.n_dialogues"] == 100 and metrics["ceiling.hl.n_raters"] == 5
    assert 0.5 < metrics["ceiling.hl.pearson"] < 0.97  # epoch-0 dialogues vary less
    assert {f"cv.spearman.t{k:02d}" for k in range(1, 17)} <= set(metrics)
    assert metrics["near_constant.t04"] == 1.0  # lowercase texting: always rated 1
    assert "cv.hl.pearson_vs_single_ratings" in metrics
    params = run.data.params
    assert params["questionnaire.id"] == "hal16q"
    assert len(params["input.weights.sha256"]) == 64
    tables = {item.path for item in client.list_artifacts(run.info.run_id, "tables")}
    assert "tables/per_trait.csv" in tables and "tables/unparseable.csv" in tables

    version = client.get_model_version_by_alias("hal-judge-local", "hal16q")
    assert str(version.version) == trained["model_version"]
    assert version.tags["questionnaire_id"] == "hal16q"
    assert version.tags["questionnaire_version"] == trained["questionnaire_version"]


@pytest.mark.slow
def test_registered_judge_rates_in_a_fresh_offline_process(
    trained, settings: HalSettings, data_dir: Path, tmp_path: Path
):
    dialogues = pd.read_csv(data_dir / "synthlabs" / "candidates_test.csv")["dialogue"].head(3)
    frame = pd.DataFrame({"dialogue": [*dialogues, "D: Hello?\nD: Anyone there?"]})
    payload = tmp_path / "input.json"
    frame.to_json(payload, orient="records")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        # any attempt to reach the network fails fast
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "",
    }
    done = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, settings.resolved_tracking_uri(), str(payload)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout[done.stdout.index("RESULT") + 6 :])
    assert result["metadata"]["questionnaire_id"] == "hal16q"
    assert result["metadata"]["questionnaire_version"] == trained["questionnaire_version"]
    served = pd.DataFrame(result["out"])
    ids = [f"t{k:02d}" for k in range(1, 17)]
    assert list(served.columns) == [*ids, "hl", "error"]
    assert served["error"].iloc[:3].isna().all() and "rated speaker" in served["error"].iloc[3]

    local = LocalJudge.load(trained["model_path"]).predict_frame(frame["dialogue"].tolist())
    pd.testing.assert_frame_equal(
        served[[*ids, "hl"]].iloc[:3], local[[*ids, "hl"]].iloc[:3], atol=1e-6
    )
