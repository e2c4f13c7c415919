"""Kill ``hal rate`` with SIGKILL mid-run, run it again: finished items are not asked again
and the final table equals an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from flows.rate_dialogues import RateDialoguesParams, rate_dialogues
from hal_core.dialogue import SpeakerTags, has_rated_speaker
from hal_core.judges import OpenAIJudgeConfig
from hal_core.judges.prompting import rating_messages, render_dialogue
from hal_core.judges.runner import rated_text_sha256
from hal_core.questionnaire import Questionnaire
from hal_core.rating_cache import RatingCache, rating_key
from hal_core.settings import PROJECT_ROOT
from tests.fakes.openai_server import FakeOpenAIServer, FaultPlan, item_key

KEY = "sk-hal-resume-test-key"
TAGS = SpeakerTags.turing()
N_DIALOGUES = 120
PLAN = FaultPlan(rate_limit=0.05, invalid_json=0.05, persistent_invalid=0.05, retry_after_s=0.1)
KILL_AFTER_ANSWERS = 30


def _judge(server: FakeOpenAIServer) -> OpenAIJudgeConfig:
    return OpenAIJudgeConfig(
        model="fake-gpt",
        base_url=server.base_url,
        concurrency=4,
        timeout_s=5.0,
        backoff_base_s=0.02,
        backoff_max_s=0.1,
    )


def _hal_rate(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hal_cli", "rate", *args],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_killed_run_resumes_without_asking_finished_items_again(
    tmp_path: Path, data_dir: Path, hal_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import PREFECT_API_URL

    table = pd.read_csv(data_dir / "turing/conversations_full.csv").iloc[300 : 300 + N_DIALOGUES]
    input_path = tmp_path / "dialogues.csv"
    table[["conversation_id", "conversation"]].to_csv(input_path, index=False)
    questionnaire = Questionnaire.load(data_dir / "questionnaires/hal32q.json")
    server_key = {  # one dialogue (row 344) has no witness line: failed, never sent
        text: item_key(rating_messages(render_dialogue(text, TAGS), questionnaire, TAGS))
        for text in table["conversation"]
        if has_rated_speaker(text, TAGS)
    }
    env = {
        **os.environ,
        "HAL_HOME": str(hal_home),  # the session's MLflow store: created once, not per run
        "HAL_DATA_DIR": str(data_dir),
        "HAL_JUDGE_API_KEY": KEY,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    cache_path = tmp_path / "cache.sqlite"
    args = [
        str(input_path),
        "--text-column",
        "conversation",
        "--id-column",
        "conversation_id",
        "--cache",
        str(cache_path),
        "--output",
        str(tmp_path / "resumed.csv"),
        "--progress",
    ]

    with FakeOpenAIServer(latency_s=0.05, faults=PLAN, api_key=KEY) as server:
        judge_file = tmp_path / "judge.yaml"
        judge_file.write_text(yaml.safe_dump(_judge(server).model_dump(mode="json")))
        args += ["--judge", str(judge_file)]

        started = time.monotonic()
        first = _hal_rate(args, env)
        deadline = time.monotonic() + 240
        while len(server.answered_keys()) < KILL_AFTER_ANSWERS:
            assert first.poll() is None, first.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the first run never got going"
            time.sleep(0.01)
        print(f"killed after {time.monotonic() - started:.1f} s")
        first.send_signal(signal.SIGKILL)
        first.wait()
        server.wait_idle()
        asked_before_kill = len(server.records)

        with RatingCache(cache_path) as cache:
            finished_cache_keys = cache.keys()
        fingerprint = _judge(server).fingerprint()
        finished = {
            server_key[text]
            for text in server_key
            if rating_key(fingerprint, questionnaire.version, rated_text_sha256(text, TAGS))
            in finished_cache_keys
        }
        # really killed mid-run; the answers lost are those in flight (4) and those the cache
        # writer had not committed yet (it commits every 20 ms)
        assert KILL_AFTER_ANSWERS - 8 <= len(finished) < N_DIALOGUES

        second = _hal_rate(args, env)
        output, _ = second.communicate(timeout=300)
        assert second.returncode == 0, output[-3000:]
        assert "rating: 100%" in output  # the CLI's progress bar
        print(f"resumed run done at {time.monotonic() - started:.1f} s")
        asked_after = {record.key for record in server.records[asked_before_kill:]}
        assert asked_after, "the rerun asked nothing: the kill came too late"
        assert not asked_after & finished
        assert asked_after | finished == set(server_key.values())
        print(
            f"kill-and-resume: {len(finished)} items finished before SIGKILL, "
            f"{asked_before_kill} requests; rerun asked {len(asked_after)} items "
            f"({len(server.records) - asked_before_kill} requests), none of the finished"
        )

    with FakeOpenAIServer(latency_s=0.0, faults=PLAN, api_key=KEY) as fresh:
        monkeypatch.setenv("HAL_HOME", str(hal_home))
        monkeypatch.setenv("HAL_DATA_DIR", str(data_dir))
        monkeypatch.setenv("HAL_JUDGE_API_KEY", KEY)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        reference = rate_dialogues(
            RateDialoguesParams(
                input_file=str(input_path),
                text_column="conversation",
                id_column="conversation_id",
                judge=_judge(fresh),
                cache_file=str(tmp_path / "fresh-cache.sqlite"),
                output_file=str(tmp_path / "uninterrupted.csv"),
            )
        )
    resumed = pd.read_csv(tmp_path / "resumed.csv")
    uninterrupted = pd.read_csv(reference.output_file)
    assert set(resumed["error_kind"].dropna()) == {"input", "invalid"}  # failures compared too
    pd.testing.assert_frame_equal(resumed, uninterrupted)
