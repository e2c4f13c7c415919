"""The train_local_judge flow on HAL16Q (the doctor's-visit judge), read back from MLflow; the
registered pyfunc loads and rates in a fresh process with no network.

To stay quick it trains on the epoch-00 files only (six folders: 100 Llama-3.3-70B dialogues
rated five times plus 100 Llama-3.2-1B dialogues rated once) and on doctor's visits only. The
figures of the default judge on all of aligned_outputs and the Turing games are asserted in
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

from hal_core.local_judge import LocalJudge
from hal_core.paper import HAL16Q_PUBLISHED_TRAIT_IDS
from hal_core.settings import HalSettings

pytestmark = pytest.mark.integration

FRESH_PROCESS = """
import json, sys
import mlflow, pandas as pd
mlflow.set_tracking_uri(sys.argv[1]); mlflow.set_registry_uri(sys.argv[1])
model = mlflow.pyfunc.load_model("models:/hal-judge-local@doctor_visit")
frame = pd.read_json(sys.argv[2], orient="records")
out = model.predict(frame)
out = out.astype(object).where(out.notna(), None)
signature = model.metadata.signature
print("RESULT" + json.dumps({"metadata": model.metadata.metadata,
                             "inputs": [[c.name, c.required] for c in signature.inputs.inputs],
                             "outputs": signature.outputs.input_names(),
                             "out": out.to_dict(orient="list")}))
"""
TEST_FILE = "candidates_train_scored16_gpt-5-mini"


@pytest.fixture(scope="module")
def trained(hal_home: Path, data_dir: Path):
    from flows.train_local_judge import TrainLocalJudgeParams, train_local_judge

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HAL_HOME", str(hal_home))
        patch.setenv("HAL_DATA_DIR", str(data_dir))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("HAL_TRACKING_URI", raising=False)
        params = TrainLocalJudgeParams(
            questionnaire="hal16q",
            domains=["doctor_visit"],
            hal16q_ratings_glob="aligned_outputs/*/samples_epoch_00_scored_gpt-5.csv",
        )
        yield train_local_judge(params)


@pytest.mark.slow
def test_metrics_transfer_tables_and_registry_entry_are_logged(trained, settings: HalSettings):
    client = MlflowClient(settings.resolved_tracking_uri())
    run = client.get_run(trained.run_id)
    assert run.info.run_name == "train_local_judge"
    assert client.get_experiment(run.info.experiment_id).name == settings.experiment_judge
    metrics = run.data.metrics
    assert metrics["n_train"] == 200 and metrics["n_unparseable"] == 0
    assert metrics["cv.hl.pearson"] > 0.6 and metrics["cv.hl.n_pairs"] > 20
    # the LLM judge against its own re-ratings (five folders, 100 dialogues at epoch 0)
    assert metrics["ceiling.hl.n_dialogues"] == 100 and metrics["ceiling.hl.n_raters"] == 5
    assert 0.5 < metrics["ceiling.hl.pearson"] < 0.97  # epoch-0 dialogues vary less
    assert "cv.spearman.mean_not_near_constant" in metrics
    assert not {f"cv.spearman.{t}" for t in HAL16Q_PUBLISHED_TRAIT_IDS} & set(metrics)
    per_trait = pd.read_csv(client.download_artifacts(run.info.run_id, "tables/per_trait.csv"))
    assert set(per_trait["trait_id"]) == set(HAL16Q_PUBLISHED_TRAIT_IDS)  # one row per trait
    t03 = per_trait.set_index("trait_id").loc["t03"]
    assert bool(t03["near_constant"]) and t03["modal_share"] == pytest.approx(1.0, abs=1e-9)
    # honest figures: each generator held out, an out-of-domain test set, the length baseline
    for generator in ("Llama-3.2-1B-Instruct", "Llama-3.3-70B-Instruct"):
        assert metrics[f"logo.{generator}.n"] == 100
        assert 0 <= metrics[f"logo.{generator}.ood_fraction"] <= 1
    assert metrics["logo.hl.pearson"] > 0.3
    assert "baseline.length.logo.hl.pair_accuracy" in metrics
    assert metrics[f"test.{TEST_FILE}.n"] == 100
    assert f"baseline.length.test.{TEST_FILE}.hl.pearson" in metrics
    params = run.data.params
    assert params["questionnaire.id"] == "hal16q" and params["domains"] == "doctor_visit"
    assert len(params["input.weights.sha256"]) == 64
    tables = {item.path for item in client.list_artifacts(run.info.run_id, "tables")}
    assert {"tables/per_trait.csv", "tables/unparseable.csv"} <= tables
    assert "tables/transfer_predictions.csv" in tables

    assert trained.trait_ids == list(HAL16Q_PUBLISHED_TRAIT_IDS)
    assert sorted(trained.aliases) == ["doctor_visit", "hal16q"]
    for alias in trained.aliases:
        version = client.get_model_version_by_alias("hal-judge-local", alias)
        assert str(version.version) == trained.model_version
    assert version.tags["questionnaire_id"] == "hal16q"
    assert version.tags["questionnaire_version"] == trained.questionnaire_version


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
    assert result["metadata"]["questionnaire_version"] == trained.questionnaire_version
    assert result["metadata"]["out_of_domain_columns"] == ["domain_distance", "out_of_domain"]
    assert result["metadata"]["out_of_domain_columns"] == trained.out_of_domain_columns
    # the contract: a dialogue column in (speaker tags optional); one column per trait id, hl,
    # the out-of-domain columns and error out, as the signature says and the model serves
    assert result["inputs"] == [["dialogue", True], ["rated_tags", False], ["other_tags", False]]
    ids = list(HAL16Q_PUBLISHED_TRAIT_IDS)
    contract = [*ids, "hl", *trained.out_of_domain_columns, "error"]
    assert result["outputs"] == contract
    served = pd.DataFrame(result["out"])
    assert list(served.columns) == contract
    assert served["error"].iloc[:3].isna().all() and "rated speaker" in served["error"].iloc[3]
    assert served["out_of_domain"].iloc[3] is None
    assert all(isinstance(flag, bool) for flag in served["out_of_domain"].iloc[:3])

    local = LocalJudge.load(trained.model_path).predict_frame(frame["dialogue"].tolist())
    numeric = [*ids, "hl", "domain_distance"]
    pd.testing.assert_frame_equal(
        served[numeric].iloc[:3].astype(float), local[numeric].iloc[:3], atol=1e-6
    )
