"""Kill the generate flow with SIGKILL mid-run on the real SmolLM2, run it again: dialogues
committed before the kill are kept and none is generated twice."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from flows.generate import GenerateParams, generate
from hal_core.settings import PROJECT_ROOT

N_PERSONAS = 5
KILL_AFTER = 2


def _params(model: Path, tmp_path: Path) -> GenerateParams:
    # batch_size 1: every dialogue is committed on its own, so the kill lands between commits.
    return GenerateParams(
        policy=str(model),
        persona_limit=N_PERSONAS,
        n_turns=2,
        max_new_tokens=8,
        batch_size=1,
        cache_file=str(tmp_path / "generations.sqlite"),
        output_file=str(tmp_path / "dialogues.csv"),
    )


def _rows(cache: Path) -> list[tuple[str, str, int]]:
    if not cache.exists():
        return []
    with sqlite3.connect(cache) as connection:
        try:
            return connection.execute("SELECT key, run, writes FROM generation").fetchall()
        except sqlite3.OperationalError:  # the table is not created yet
            return []


@pytest.mark.slow
def test_a_killed_generation_resumes_without_generating_any_dialogue_twice(
    smollm2_folder: Path, tmp_path: Path, data_dir: Path, hal_home: Path, monkeypatch
) -> None:
    from prefect.settings import PREFECT_API_URL

    params = _params(smollm2_folder, tmp_path)
    env = {
        **os.environ,
        "HAL_HOME": str(hal_home),
        "HAL_DATA_DIR": str(data_dir),
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    code = (
        "from flows.generate import GenerateParams, generate;"
        f"generate(GenerateParams.model_validate_json({params.model_dump_json()!r}))"
    )
    first = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    cache = Path(params.cache_file)
    deadline = time.monotonic() + 600
    while len(_rows(cache)) < KILL_AFTER:
        assert first.poll() is None, first.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the first run never got going"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = _rows(cache)
    assert KILL_AFTER <= len(before) < N_PERSONAS, "the kill must land mid-run"
    (first_run,) = {run for _, run, _ in before}

    monkeypatch.setenv("HAL_HOME", str(hal_home))
    monkeypatch.setenv("HAL_DATA_DIR", str(data_dir))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = generate(params)
    assert (result.n_cached, result.n_generated) == (len(before), N_PERSONAS - len(before))
    after = _rows(cache)
    assert len(after) == N_PERSONAS
    assert all(writes == 1 for _, _, writes in after), "a dialogue was written twice"
    assert set(before) <= set(after), "dialogues finished before the kill were replaced"
    assert sum(run == first_run for _, run, _ in after) == len(before)
    table = pd.read_csv(result.output_file, keep_default_na=False)
    assert len(table) == N_PERSONAS and table["dialogue"].str.contains("\nP: ").all()
