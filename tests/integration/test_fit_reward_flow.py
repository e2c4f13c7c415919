"""The fit_reward flow on the real ratings, read back from MLflow."""

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from flows.fit_reward import FitRewardParams, fit_reward
from flows.validate_data import ValidateDataParams, validate_data

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fitted(hal_home, data_dir):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HAL_HOME", str(hal_home))
        patch.setenv("HAL_DATA_DIR", str(data_dir))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        result = fit_reward(FitRewardParams())
        yield result


def test_metrics_and_every_trait_weight_are_logged(fitted, settings):
    mlflow.set_tracking_uri(settings.resolved_tracking_uri())
    run = MlflowClient().get_run(fitted.run_id)
    assert run.info.run_name == "fit_reward"
    metrics = run.data.metrics
    assert metrics["cv.accuracy.mean"] == pytest.approx(0.7747, abs=5e-4)
    assert metrics["cv_refit.accuracy"] == pytest.approx(0.7712, abs=5e-4)
    assert {"cv.accuracy.std", "cv_grouped.accuracy", "paired.accuracy"} <= set(metrics)
    assert metrics["n_selected"] == 16
    assert {f"weight.full.t{i:02d}" for i in range(1, 33)} <= set(metrics)
    assert {f"weight.selected.{t}" for t in fitted.selected_trait_ids} <= set(metrics)
    assert len(run.data.params["input.ratings.sha256"]) == 64
    history = MlflowClient().get_metric_history(fitted.run_id, "cv.accuracy.per_seed")
    assert len(history) == 20


def test_artifacts_hold_reward_plots_and_validation(fitted, settings):
    mlflow.set_tracking_uri(settings.resolved_tracking_uri())
    client = MlflowClient()

    def listing(path=None):
        return {item.path for item in client.list_artifacts(fitted.run_id, path)}

    assert {"reward.json", "questionnaire.json", "plots", "validation", "tables"} <= listing()
    assert {"plots/trait_weights.png", "plots/hl_histogram_grouped_cv.png"} <= listing("plots")
    validation = listing("validation/turing/ratings32_gpt-5")
    assert "validation/turing/ratings32_gpt-5/validation_result.json" in validation
    assert "validation/turing/ratings32_gpt-5/data_docs" in validation


def test_champion_alias_serves_hl_scores_by_trait_id(fitted, settings, data_dir):
    mlflow.set_tracking_uri(settings.resolved_tracking_uri())
    version = MlflowClient().get_model_version_by_alias("hal-reward", "champion")
    assert str(version.version) == fitted.model_version
    model = mlflow.pyfunc.load_model("models:/hal-reward@champion")
    rng = np.random.default_rng(1)
    ratings = pd.DataFrame(
        rng.integers(1, 6, size=(5, 32)).astype(float),
        columns=[f"t{i:02d}" for i in range(1, 33)],
    )
    scores = np.asarray(model.predict(ratings))
    reordered = np.asarray(model.predict(ratings[ratings.columns[::-1]]))
    np.testing.assert_allclose(scores, reordered)
    weights = {t: MlflowClient().get_run(fitted.run_id).data.metrics[f"weight.selected.{t}"]
               for t in fitted.selected_trait_ids}  # fmt: skip
    bias = MlflowClient().get_run(fitted.run_id).data.metrics["bias.selected"]
    expected = ratings[list(weights)].to_numpy() @ np.array(list(weights.values())) + bias
    np.testing.assert_allclose(scores, expected, atol=1e-9)


def test_validate_flow_quarantines_and_logs(settings, tmp_path):
    broken = pd.read_csv(settings.data_path("turing/games.csv"))
    broken.loc[5, "who_is_human"] = "C"
    path = tmp_path / "games_broken.csv"
    broken.to_csv(path, index=False)
    summaries = validate_data(
        ValidateDataParams(datasets={str(path): "turing_games"}, policy="quarantine")
    )
    assert [(s.rows, s.valid_rows, s.quarantined_rows) for s in summaries] == [(557, 556, 1)]
    mlflow.set_tracking_uri(settings.resolved_tracking_uri())
    run = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name(settings.experiment_data).experiment_id],
        order_by=["start_time DESC"],
        max_results=1,
    )[0]
    assert run.data.metrics["validation.games_broken.quarantined_rows"] == 1
    assert run.data.metrics["validation.quarantined_rows"] == 1


def test_same_named_files_in_different_folders_keep_separate_validation_evidence(settings):
    summaries = validate_data(
        ValidateDataParams(
            datasets={
                "aligned_outputs/Llama-3.2-*-Instruct/samples_epoch_00_*.csv": "aligned_outputs16"
            }
        )
    )
    assert [s.file for s in summaries] == [
        "aligned_outputs/Llama-3.2-1B-Instruct/samples_epoch_00_scored_gpt-5.csv",
        "aligned_outputs/Llama-3.2-3B-Instruct/samples_epoch_00_scored_gpt-5.csv",
    ]
    mlflow.set_tracking_uri(settings.resolved_tracking_uri())
    client = MlflowClient()
    run = client.search_runs(
        [client.get_experiment_by_name(settings.experiment_data).experiment_id],
        order_by=["start_time DESC"],
        max_results=1,
    )[0]
    for model in ("Llama-3.2-1B-Instruct", "Llama-3.2-3B-Instruct"):
        folder = f"validation/aligned_outputs/{model}/samples_epoch_00_scored_gpt-5"
        listed = {item.path for item in client.list_artifacts(run.info.run_id, folder)}
        assert f"{folder}/validation_result.json" in listed
        assert run.data.metrics[f"{folder.replace('validation/', 'validation.', 1)}.rows"] == 100
