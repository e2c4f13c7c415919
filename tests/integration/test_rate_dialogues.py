"""Flow ``rate_dialogues`` against a faulty OpenAI-compatible server: nothing lost, nothing
duplicated, nothing guessed, a cached rerun makes no request, and the key never leaks."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from flows.rate_dialogues import RateDialoguesParams, rate_dialogues
from hal_core.dialogue import SpeakerTags
from hal_core.judges import OpenAIJudgeConfig
from hal_core.judges.prompting import EmptyDialogueError, rating_messages, render_dialogue
from hal_core.judges.runner import rated_text_sha256
from hal_core.questionnaire import Questionnaire
from hal_core.rating_cache import RatingCache, rating_key
from tests.fakes.logs import captured_logs
from tests.fakes.openai_server import FakeOpenAIServer, FaultPlan, expected_rating, item_key
from tests.integration.recorded_texts import recorded_texts

TAGS = SpeakerTags.turing()
KEY = "sk-hal-SECRET-integration-7f3a9c21"
SECRET_BLOCK = "hal-test-judge-key"
N_DIALOGUES = 240
PLAN = FaultPlan(
    rate_limit=0.06,
    server_error=0.06,
    hang=0.03,
    broken_body=0.03,
    invalid_json=0.05,
    out_of_range=0.05,
    missing_ids=0.05,
    persistent_invalid=0.04,
    retry_after_s=0.2,
    hang_s=2.0,
    seed=3,
)


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory, data_dir: Path):
    """Two runs of the flow (fresh, then fully cached) against one faulty server."""
    import os

    from prefect.blocks.system import Secret

    root = tmp_path_factory.mktemp("rating")
    home = root / "home"
    # rows 11-250: 240 real dialogues, the last of which has no witness line at all
    table = pd.read_csv(data_dir / "turing/conversations_full.csv").iloc[11 : 11 + N_DIALOGUES]
    table = table.reset_index(drop=True)
    input_path = root / "dialogues.csv"
    table[["conversation_id", "conversation"]].to_csv(input_path, index=False)
    Secret(value=KEY).save(SECRET_BLOCK, overwrite=True)
    questionnaire = Questionnaire.load(data_dir / "questionnaires/hal32q.json")

    saved = {k: os.environ.get(k) for k in ("HAL_HOME", "HAL_DATA_DIR", "MLFLOW_TRACKING_URI")}
    os.environ["HAL_HOME"] = str(home)
    os.environ["HAL_DATA_DIR"] = str(data_dir)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        with (
            captured_logs() as logs,
            FakeOpenAIServer(latency_s=0.005, faults=PLAN, api_key=KEY) as server,
        ):
            judge = OpenAIJudgeConfig(
                model="fake-gpt",
                base_url=server.base_url,
                api_key_secret_block=SECRET_BLOCK,
                concurrency=16,
                timeout_s=1.0,
                max_retries=4,
                backoff_base_s=0.02,
                backoff_max_s=0.1,
                price_prompt_per_mtok=1.25,
                price_completion_per_mtok=10.0,
            )
            params = RateDialoguesParams(
                input_file=str(input_path),
                text_column="conversation",
                id_column="conversation_id",
                judge=judge,
                output_file=str(root / "ratings.csv"),
            )
            started = time.monotonic()
            first = rate_dialogues(params)
            print(f"first run: {time.monotonic() - started:.1f} s")
            server.wait_idle()
            first_records = server.records
            first_table = pd.read_csv(first.output_file)
            second = rate_dialogues(
                params.model_copy(update={"output_file": str(root / "again.csv")})
            )
            second_records = server.records
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return {
        "table": table,
        "questionnaire": questionnaire,
        "first": first,
        "second": second,
        "first_table": first_table,
        "second_table": pd.read_csv(second.output_file),
        "first_records": first_records,
        "second_records": second_records,
        "logs": logs,
        "home": home,
        "cache": home / "cache" / "ratings.sqlite",
    }


def _server_key(text: str, questionnaire: Questionnaire) -> str | None:
    try:
        return item_key(rating_messages(render_dialogue(text, TAGS), questionnaire, TAGS))
    except EmptyDialogueError:
        return None


def test_every_dialogue_ends_rated_or_failed_with_a_reason(fault_run) -> None:
    table, ratings = fault_run["table"], fault_run["first_table"]
    questionnaire = fault_run["questionnaire"]
    records = fault_run["first_records"]
    keys = [_server_key(text, questionnaire) for text in table["conversation"]]

    # >= 20% of first answers were faulty
    first_attempts = [r for r in records if r.attempt == 1]
    faulty = sum(r.fault is not None for r in first_attempts)
    assert len(first_attempts) == sum(key is not None for key in keys)
    assert faulty / len(first_attempts) >= 0.20
    by_kind = Counter(r.fault for r in first_attempts if r.fault)
    print(
        f"fault run: {len(table)} dialogues, {faulty}/{len(first_attempts)} faulty first answers "
        f"({faulty / len(first_attempts):.0%}) {dict(by_kind)}, {len(records)} requests, "
        f"{(ratings['status'] == 'rated').sum()} rated, {(ratings['status'] == 'failed').sum()} "
        f"failed {ratings['error_kind'].value_counts().to_dict()}"
    )

    # zero lost, zero duplicates: one row per input, in order, each rated or failed
    assert ratings["item_id"].astype(str).tolist() == table["conversation_id"].astype(str).tolist()
    assert set(ratings["status"]) <= {"rated", "failed"}
    failed = ratings[ratings["status"] == "failed"]
    assert failed["error"].notna().all() and failed["error_kind"].notna().all()
    # every request the server saw is accounted to exactly one item, and each item's
    # result was committed once: no finished item was asked again
    fingerprint = fault_run["first"].judge_fingerprint
    with RatingCache(fault_run["cache"]) as cache:
        cache_keys = [
            rating_key(fingerprint, questionnaire.version, rated_text_sha256(text, TAGS))
            for text in table["conversation"]
        ]
        stored = cache.get_many(cache_keys)
        assert sum(cache.counts().values()) == len(stored) == N_DIALOGUES
    served = Counter(record.key for record in records)
    for cache_key, key in zip(cache_keys, keys, strict=True):
        assert stored[cache_key].requests == (served[key] if key is not None else 0)

    # the failures are exactly the items the server never answered validly, with reasons
    expected_failed = {
        i for i, key in enumerate(keys) if key is None or PLAN.kind_for(key) == "persistent_invalid"
    }
    assert set(failed.index) == expected_failed
    for i in expected_failed:
        kind = ratings.loc[i, "error_kind"]
        assert kind == ("input" if keys[i] is None else "invalid")
    assert "after one repair request" in " ".join(failed["error"].dropna())

    # nothing guessed: every rating is the server's clean answer for that item
    for i, key in enumerate(keys):
        if i in expected_failed:
            continue
        row = ratings.loc[i, questionnaire.trait_ids].astype(int).to_dict()
        assert row == {t: expected_rating(key, t) for t in questionnaire.trait_ids}


def test_metrics_are_recorded_in_mlflow(fault_run) -> None:
    ratings = fault_run["first_table"]
    metrics = MlflowClient().get_run(fault_run["first"].run_id).data.metrics
    assert metrics["rated"] == (ratings["status"] == "rated").sum()
    assert metrics["failures"] == (ratings["status"] == "failed").sum()
    assert metrics["rated"] + metrics["failures"] == N_DIALOGUES
    assert metrics["cache_hits"] == 0
    assert metrics["requests"] == len(fault_run["first_records"])
    assert metrics["tokens"] > 0 and metrics["estimated_cost_usd"] > 0
    assert 0 < metrics["latency_p50_s"] <= metrics["latency_p95_s"]
    assert "ood_fraction" not in metrics  # an API judge has no out-of-domain signal


def test_cached_rerun_makes_no_request_and_gives_the_same_table(fault_run) -> None:
    assert len(fault_run["second_records"]) == len(fault_run["first_records"])
    metrics = MlflowClient().get_run(fault_run["second"].run_id).data.metrics
    assert metrics["requests"] == 0
    assert metrics["cache_hits"] == N_DIALOGUES  # ratings and recorded failures alike
    pd.testing.assert_frame_equal(fault_run["first_table"], fault_run["second_table"])


def test_api_key_never_reaches_mlflow_or_logs(fault_run, tmp_path: Path) -> None:
    run_ids = [fault_run["first"].run_id, fault_run["second"].run_id]
    texts = list(fault_run["logs"]) + recorded_texts(run_ids, tmp_path, "rating_summary.json")
    texts += [p.read_bytes().decode("utf-8", "replace") for p in fault_run["home"].rglob("*.csv")]
    assert not [text[:200] for text in texts if KEY in text]
    assert any("judge.api_key_secret_block" in text for text in texts)  # we did scan params


def test_recorded_judge_through_the_flow_gives_a_table_by_trait_id(
    settings, data_dir: Path, tmp_path: Path
) -> None:
    """Replaying one file of the paper's ratings through the flow (a non-streaming judge)."""
    import json

    from hal_core.judges import RecordedJudgeConfig
    from hal_core.questionnaire import Trait

    published = json.loads((data_dir / "questionnaires/hal16q_published.json").read_text())
    questionnaire = Questionnaire(
        name="hal16q-published",
        traits=tuple(
            Trait(id=f"t{item['position']:02d}", text=item["text"])
            for item in published["statements_in_rating_order"]
        ),
    ).save(tmp_path / "hal16q.json")
    source = "aligned_outputs/Llama-3.2-1B-Instruct/samples_epoch_03_scored_gpt-5.csv"
    result = rate_dialogues(
        RateDialoguesParams(
            input_file=source,
            id_column="dialogue_id",
            questionnaire_file=str(questionnaire),
            speakers="doctor_visit",
            judge=RecordedJudgeConfig(paths=[source]),
            cache_file=str(tmp_path / "cache.sqlite"),
        )
    )
    table = pd.read_csv(result.output_file)
    stored = pd.read_csv(data_dir / source)
    assert (table["status"] == "rated").all() and len(table) == len(stored) == 100
    assert [c for c in table.columns if c.startswith("t")] == [f"t{i:02d}" for i in range(1, 17)]
    listed = stored["likert_evaluation"].map(json.loads).tolist()
    assert table[[f"t{i:02d}" for i in range(1, 17)]].to_numpy().tolist() == listed
    assert result.metrics["requests"] == 0 and result.metrics["rated"] == 100


def test_hal_rate_against_a_closed_port_stops_early_and_exits_non_zero(
    settings, tmp_path: Path
) -> None:
    """The issue's run: 48 dialogues, a judge whose base_url is a closed port, the defaults
    (16 in flight, 7 attempts). It used to end with exit 0 after minutes, every item "timed
    out after 180 s"; now it stops within the first retries and says the connection was
    refused, by whom."""
    import socket

    from click.testing import CliRunner

    from hal_cli.commands import app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dialogues = tmp_path / "dialogues.csv"
    table = pd.read_csv(settings.data_path("turing/conversations_full.csv")).head(48)
    table[["conversation_id", "conversation"]].to_csv(dialogues, index=False)
    started = time.monotonic()
    invoked = CliRunner().invoke(
        app,
        [
            "rate",
            str(dialogues),
            "--text-column",
            "conversation",
            "--base-url",
            f"http://127.0.0.1:{port}/v1",
            "--model",
            "fake-judge",
            "--cache",
            str(tmp_path / "cache.sqlite"),
        ],
    )
    elapsed = time.monotonic() - started
    print(f"closed port: the CLI run (flow, MLflow and judge) ended after {elapsed:.1f} s")
    assert invoked.exit_code != 0
    message = invoked.output
    assert f"connection refused by 127.0.0.1:{port}" in message
    assert "stopped early" in message and f"http://127.0.0.1:{port}/v1" in message
    with RatingCache(tmp_path / "cache.sqlite") as cache:
        assert cache.counts() == {} and cache.claim_owners() == set()  # nothing left claimed
