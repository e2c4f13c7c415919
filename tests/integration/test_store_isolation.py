"""Each HAL_HOME is a whole, separate store, Prefect's state included, and two commands can
start on a new one at once.

Every command here is a real ``hal`` process with its own HAL_HOME and a throwaway HOME, so
that a Prefect state left in ``~/.prefect`` would show.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from hal_cli.serving import READY_LINE
from hal_core.reward import HLReward
from hal_core.settings import PROJECT_ROOT, HalSettings
from tests.servers.processes import free_port, start, wait_until

pytestmark = pytest.mark.integration

JUDGE_KEY = "sk-test-isolation"


def command_env(home: Path, user_home: Path, data_dir: Path) -> dict[str, str]:
    """A hal process on ``home`` with nothing of Prefect, MLflow or hal inherited."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_", "MLFLOW_", "HAL_"))
    }
    user_home.mkdir(parents=True, exist_ok=True)
    return env | {
        "HOME": str(user_home),
        "HAL_HOME": str(home),
        "HAL_DATA_DIR": str(data_dir),
        "HAL_JUDGE_API_KEY": JUDGE_KEY,
    }


def start_all(commands: list[list[str]], envs: list[dict[str, str]]) -> list[tuple[int, str, int]]:
    """Start every command at once; their exit codes, outputs and process ids."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "hal_cli", *command],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for command, env in zip(commands, envs, strict=True)
    ]
    results = []
    for process in processes:
        output, _ = process.communicate(timeout=900)
        results.append((process.returncode, output, process.pid))
    return results


def prefect_flow_runs(home: Path) -> list[tuple[str, str, dict]]:
    """(flow run id, flow name, parameters) of every flow run in the home's Prefect DB."""
    with sqlite3.connect(home / "prefect" / "prefect.db") as connection:
        rows = connection.execute(
            "SELECT flow_run.id, flow.name, flow_run.parameters "
            "FROM flow_run JOIN flow ON flow_run.flow_id = flow.id"
        ).fetchall()
    return [(run_id, name, json.loads(parameters)) for run_id, name, parameters in rows]


@pytest.mark.slow
def test_two_commands_started_at_once_on_a_new_home_both_finish_and_are_both_tracked(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from tests.fakes.openai_server import FakeOpenAIServer

    home, user_home = tmp_path / "new_home", tmp_path / "user"
    dialogues = tmp_path / "dialogues.csv"
    table = pd.read_csv(data_dir / "turing" / "conversations_full.csv").head(4)
    table[["conversation_id", "conversation"]].to_csv(dialogues, index=False)
    env = command_env(home, user_home, data_dir)
    with FakeOpenAIServer(latency_s=0.05, api_key=JUDGE_KEY) as server:
        commands = [
            ["rate", str(dialogues), "--text-column", "conversation", "--id-column",
             "conversation_id", "--base-url", server.base_url, "--model", "fake-judge",
             "--concurrency", "2", "--output", str(tmp_path / f"ratings-{i}.csv")]
            for i in range(2)
        ]  # fmt: skip
        results = start_all(commands, [env, env])
    for returncode, output, _ in results:
        assert returncode == 0, output[-3000:]
    for i in range(2):
        ratings = pd.read_csv(tmp_path / f"ratings-{i}.csv")
        assert len(ratings) == 4

    for leaked in ("MLFLOW_TRACKING_URI", "HAL_TRACKING_URI"):  # set by earlier tests
        monkeypatch.delenv(leaked, raising=False)
    settings = HalSettings(home=home, data_dir=data_dir)
    client = MlflowClient(tracking_uri=settings.resolved_tracking_uri())
    experiment = client.get_experiment_by_name(settings.experiment_rating)
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.data.tags["hal.pid"] for run in runs) == sorted(
        str(pid) for _, _, pid in results
    )
    assert {run.info.status for run in runs} == {"FINISHED"}
    flow_runs = prefect_flow_runs(home)
    assert sorted(run_id.replace("-", "") for run_id, _, _ in flow_runs) == sorted(
        run.data.tags["prefect.flow_run_id"].replace("-", "") for run in runs
    )
    assert not (user_home / ".prefect").exists()


@pytest.mark.slow
def test_each_home_holds_only_its_own_flow_runs_and_the_users_prefect_is_untouched(
    data_dir: Path, tmp_path: Path
):
    user_home = tmp_path / "user"
    reward = HLReward(weights={"t01": 1.0, "t02": 2.0}, bias=0.5).save(tmp_path / "reward.json")
    homes = [tmp_path / "home_a", tmp_path / "home_b"]
    commands, envs = [], []
    for home in homes:
        home.mkdir()
        ratings = home / "ratings.csv"
        rows = [{"item_id": i, "t01": 3, "t02": 4, "status": "rated"} for i in (1, 2)]
        pd.DataFrame(rows).to_csv(ratings, index=False)
        commands.append(["score", str(ratings), "--reward", str(reward)])
        envs.append(command_env(home, user_home, data_dir))
    for returncode, output, _ in start_all(commands, envs):
        assert returncode == 0, output[-3000:]

    own_runs = []
    for home in homes:
        [(run_id, flow_name, parameters)] = prefect_flow_runs(home)
        assert flow_name == "score_ratings"
        assert parameters["params"]["ratings_file"] == str(home / "ratings.csv")
        own_runs.append(run_id.replace("-", ""))
    assert not (user_home / ".prefect").exists()

    # `hal serve` on the first home shows that home's flow run, and only it
    port = free_port()
    command = [sys.executable, "-m", "hal_cli", "serve", "--port", str(port),
               "--mlflow-port", str(free_port()), "--deployment", "rate-dialogues",
               "--pool", "hal-cpu"]  # fmt: skip
    served = start("hal-serve", command, envs[0] | {"PYTHONUNBUFFERED": "1"}, tmp_path)
    try:
        wait_until(lambda: READY_LINE in served.log.read_text(), 900, "hal serve", [served])
        shown = httpx.post(
            f"http://127.0.0.1:{port}/api/flow_runs/filter",
            json={"flows": {"name": {"any_": ["score_ratings"]}}},
            timeout=60,
        )
        assert shown.status_code == 200, shown.text
        assert [run["id"].replace("-", "") for run in shown.json()] == own_runs[:1]
    finally:
        served.stop()
    assert not (user_home / ".prefect").exists()
