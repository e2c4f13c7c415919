"""`hal compare` shows the reward comparison table a fit_reward run logged."""

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from hal_cli.commands import app
from hal_core.reward_comparison import COMPARISON_COLUMNS
from hal_core.settings import HalSettings
from tasks.reward import log_reward_comparison
from tasks.tracking import configure_tracking, ensure_experiment

pytestmark = pytest.mark.integration

EXPERIMENT = "hal-reward-compare-test"


def _table(shape_accuracy: float) -> pd.DataFrame:
    rows = [
        ("gpt-5", "l1", "hal32q", 16, "inside folds", 0.7675, 0.8474, 10, 42),
        ("gpt-5", "shape", "hal32q", 32, "none (every trait)", shape_accuracy, 0.8941, 10, 42),
    ]
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))


NAME, STAGE = "fit_reward:hal32q", {"hal.stage": "fit_reward"}  # found by stage, not name


@pytest.fixture()
def reward_runs(settings: HalSettings) -> dict[str, str]:
    """Three fit_reward runs, oldest first: one with the table, one without (it ran before the
    table existed), one that failed after logging a table."""
    configure_tracking(settings)
    experiment = ensure_experiment(EXPERIMENT, settings)
    ids = {}
    with mlflow.start_run(run_name=NAME, experiment_id=experiment, tags=STAGE) as run:
        log_reward_comparison.fn(run.info.run_id, _table(0.8151))
        ids["with_table"] = run.info.run_id
    with mlflow.start_run(run_name=NAME, experiment_id=experiment, tags=STAGE) as run:
        mlflow.log_metric("cv.accuracy.mean", 0.7747)
        ids["without_table"] = run.info.run_id
    with mlflow.start_run(run_name=NAME, experiment_id=experiment, tags=STAGE) as run:
        log_reward_comparison.fn(run.info.run_id, _table(0.5))
        ids["failed"] = run.info.run_id
    MlflowClient().set_terminated(ids["failed"], status="FAILED")
    return ids


def test_compare_prints_the_latest_finished_reward_comparison(reward_runs) -> None:
    output = CliRunner().invoke(app, ["compare", "--experiment", EXPERIMENT])
    assert output.exit_code == 0, output.output
    text = output.output
    assert f"reward comparison of fit_reward run {reward_runs['with_table']}" in text
    assert "10 game-grouped folds, fold seed 42" in text
    table = text[text.index("reward comparison of") :].splitlines()[1:]
    assert table[0].split() == [
        "judge", "model", "trait_set", "n_traits", "selection", "cv_grouped_accuracy",
        "paired_accuracy",
    ]  # fmt: skip
    assert table[2].split()[:4] == ["gpt-5", "shape", "hal32q", "32"]
    assert table[2].split()[-2:] == ["0.8151", "0.8941"]
    assert "0.5000" not in text  # the failed run's table is passed over


def test_compare_shows_a_named_run_and_refuses_one_without_a_table(reward_runs) -> None:
    named = CliRunner().invoke(
        app, ["compare", "--experiment", EXPERIMENT, "--reward-run", reward_runs["failed"]]
    )
    assert named.exit_code == 0, named.output
    assert f"fit_reward run {reward_runs['failed']}" in named.output and "0.5000" in named.output
    missing = CliRunner().invoke(app, ["compare", "--reward-run", reward_runs["without_table"]])
    assert missing.exit_code != 0
    assert f"{reward_runs['without_table']} ({NAME}) logged no reward_comparison.json" in (
        missing.output
    )
    unknown = CliRunner().invoke(app, ["compare", "--reward-run", "no-such-run"])
    assert unknown.exit_code != 0 and "no-such-run" in unknown.output
