"""The evaluate flow on the published aligned outputs, read back from MLflow and Prefect."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from scipy import stats

from hal_core.paper import HAL16Q_PUBLISHED_TRAIT_IDS, PAPER_WEIGHT_TRAIT_IDS
from hal_core.settings import HalSettings


def metric_history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def stored_epochs(data_dir: Path) -> dict[str, dict[int, pd.DataFrame]]:
    """The published files, read independently of the code under test."""
    found: dict[str, dict[int, pd.DataFrame]] = {}
    for path in sorted((data_dir / "aligned_outputs").glob("*/samples_epoch_*_scored_*.csv")):
        epoch = int(re.search(r"samples_epoch_(\d+)_", path.name).group(1))
        found.setdefault(path.parent.name, {})[epoch] = pd.read_csv(path)
    return found


@pytest.mark.slow
def test_recorded_evaluation_reproduces_stored_hl_and_logs_tests(
    settings: HalSettings, data_dir: Path, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from hal_cli.commands import app

    pairs = tmp_path / "pairs.csv"
    pd.DataFrame(
        {
            "left_model": ["base", "aligned", "base"],
            "right_model": ["aligned", "base", "aligned"],
            "hl_score": ["Certainly B", "Likely A", "Tie"],
            "is_completed": [True, True, True],
        }
    ).to_csv(pairs, index=False)

    # Through the CLI, which fills the flow's parameter model, runs the flow, prints its result.
    invoked = CliRunner().invoke(app, ["evaluate", "--pairwise-csv", str(pairs), "--seed", "1"])
    assert invoked.exit_code == 0, invoked.output
    result = json.loads(invoked.stdout[invoked.stdout.index("{") :])

    client = MlflowClient(settings.resolved_tracking_uri())
    run = client.get_run(result["run_id"])
    assert run.info.run_name == "evaluate"
    assert client.get_experiment(run.info.experiment_id).name == settings.experiment_evaluation
    assert run.data.metrics["rating.failed"] == 0

    published = stored_epochs(data_dir)
    assert len(published) == 6
    errors, tests = [], {}
    for model, epochs in published.items():
        history = {
            m.step: m.value for m in client.get_metric_history(run.info.run_id, f"{model}/hl.mean")
        }
        assert sorted(history) == sorted(epochs), model
        for epoch, frame in epochs.items():
            errors.append(abs(history[epoch] - frame["hal16_score"].mean()))
        # Epoch 10 vs 00, one-sided paired t-test by prompt, computed here from the files.
        base = epochs[0].set_index("prompt")["hal16_score"]
        last = epochs[10].set_index("prompt")["hal16_score"].loc[base.index]
        expected = stats.ttest_rel(last, base, alternative="greater")
        t = {
            m.step: m.value for m in client.get_metric_history(run.info.run_id, f"{model}/ttest.t")
        }
        p = {
            m.step: m.value for m in client.get_metric_history(run.info.run_id, f"{model}/ttest.p")
        }
        assert t[10] == pytest.approx(expected.statistic, rel=1e-9)
        assert p[10] == pytest.approx(expected.pvalue, rel=1e-6, abs=1e-300)
        tests[model] = (t[10], p[10])
        # Per-trait shift of the first published statement (t01), base -> epoch 10.
        first = [json.loads(cell)[0] for cell in epochs[10]["likert_evaluation"]]
        first_base = [json.loads(cell)[0] for cell in epochs[0]["likert_evaluation"]]
        shift = {
            m.step: m.value
            for m in client.get_metric_history(run.info.run_id, f"{model}/shift.t01")
        }
        assert shift[10] == pytest.approx(np.mean(first) - np.mean(first_base))
        assert shift[0] == pytest.approx(0.0, abs=1e-12)  # the base against itself
    assert max(errors) < 1e-6
    print(f"max |per-epoch mean HL - stored mean hal16_score| = {max(errors):.2e}")
    for model, (t, p) in sorted(tests.items()):
        print(f"{model}: epoch 10 vs 00, one-sided paired t = {t:.2f}, p = {p:.2e}")
        assert p < 1e-6
    assert run.data.metrics["hl.stored_max_abs_diff"] < 1e-6

    # Two scores side by side: paper-compatible (= the stored hal16_score) and by trait id.
    weights = json.loads((data_dir / "hal16_weights_paper.json").read_text())
    fitted = dict(zip(PAPER_WEIGHT_TRAIT_IDS, weights["w"], strict=True))
    by_id_errors = []
    for model, epochs in published.items():
        compatible = metric_history(client, run.info.run_id, f"{model}/hl.paper_compatible.mean")
        by_id = metric_history(client, run.info.run_id, f"{model}/hl.by_id.mean")
        for epoch, frame in epochs.items():
            assert compatible[epoch] == pytest.approx(frame["hal16_score"].mean(), abs=1e-9)
            scores = [
                weights["b"]
                + sum(
                    fitted[t] * v
                    for t, v in zip(HAL16Q_PUBLISHED_TRAIT_IDS, json.loads(cell), strict=True)
                    if t in fitted
                )
                for cell in frame["likert_evaluation"]
            ]
            by_id_errors.append(abs(by_id[epoch] - np.mean(scores)))
        assert result["hl_by_id_gain"][model] == pytest.approx(
            run.data.metrics[f"{model}/hl.by_id.gain"]
        )
    assert max(by_id_errors) < 1e-9
    assert {"hl.paper_compatible.gain", "hl.by_id.gain"} <= set(run.data.metrics)
    print(
        "mean gain over models: paper-compatible "
        f"{run.data.metrics['hl.paper_compatible.gain']:.3f}"
        f", by id {run.data.metrics['hl.by_id.gain']:.3f}"
    )

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/hl_by_epoch.png", "plots/trait_shifts.png"}
    folder = Path(client.download_artifacts(run.info.run_id, "evaluation", str(tmp_path)))
    report = json.loads((folder / "report.json").read_text())
    assert report["best_epoch"] == result["best_epoch"]
    assert "14 of 16" in report["score_explanation"]
    assert any(
        name.startswith("responses.Llama-3.2-1B-Instruct.e10") for name in report["input_sha256"]
    )
    shifts = pd.read_csv(folder / "trait_shifts.csv")
    assert len(shifts) == sum(len(e) for e in published.values()) * 16
    assert run.data.params["input.reward.sha256"]

    # Pairwise: aligned scores 1 (Certainly B), 0.75 (Likely A, as left) and 0.5 (Tie).
    assert run.data.metrics["pairwise/aligned/win_rate"] == pytest.approx((1 + 0.75 + 0.5) / 3)
    assert run.data.metrics["pairwise/base/win_rate"] == pytest.approx((0 + 0.25 + 0.5) / 3)
    assert run.data.metrics["pairwise/aligned/elo"] > 1500 > run.data.metrics["pairwise/base/elo"]

    # The summary is a Prefect artifact too (the UI's Artifacts tab), naming the MLflow run.
    key_filter = ArtifactFilter(key=ArtifactFilterKey(any_=["evaluation-summary"]))
    with get_client(sync_client=True) as prefect_client:
        summaries = prefect_client.read_artifacts(artifact_filter=key_filter)
    mine = [str(a.data) for a in summaries if result["run_id"] in str(a.data)]
    assert mine and "by-id gain" in mine[0] and "14 of 16" in mine[0]
    examples = Path(client.download_artifacts(run.info.run_id, "examples", str(tmp_path)))
    assert "Before and after alignment" in (examples / "before_after.md").read_text()


def test_compare_shows_pipeline_runs_with_stage_metrics_and_blanks(
    settings: HalSettings,
) -> None:
    import mlflow

    from hal_cli.commands import app
    from tasks.tracking import configure_tracking, ensure_experiment

    configure_tracking(settings)
    experiment = ensure_experiment("hal-pipeline-compare-test", settings)
    with mlflow.start_run(run_name="hal_pipeline", experiment_id=experiment) as parent:
        mlflow.log_metric("hl.gain", 4.25)
        with mlflow.start_run(run_name="fit_reward", experiment_id=experiment, nested=True):
            mlflow.log_metrics({"cv.accuracy.mean": 0.7747, "n_selected": 16, "other": 1.0})
    with mlflow.start_run(run_name="hal_pipeline", experiment_id=experiment) as empty:
        pass

    output = CliRunner().invoke(app, ["compare", "--experiment", "hal-pipeline-compare-test"])
    assert output.exit_code == 0, output.output
    lines = output.output.splitlines()
    header = lines[0].split()
    assert header[:4] == ["run_id", "run_name", "start", "status"]
    assert header[4:] == [
        "cv.accuracy.mean", "cv_grouped.accuracy", "paired.accuracy", "n_selected",
        "dpo.rewards.margins", "hl.gain",
    ]  # fmt: skip
    assert len(lines) == 3  # two top-level runs; the stage run is folded into its parent
    full = next(line for line in lines if line.startswith(parent.info.run_id[:12]))
    assert "0.7747" in full and "16" in full and "4.2500" in full and "1.0000" not in full
    blank = next(line for line in lines if line.startswith(empty.info.run_id[:12]))
    assert blank.split()[-1] == "FINISHED"  # every metric column is blank
