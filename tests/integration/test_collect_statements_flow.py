"""Flow ``collect_statements`` against a faulty OpenAI-compatible server and the recorded GPT-5
statements: every game ends proposed or failed with a reason, a cached rerun asks nothing,
the table loads through derive_traits' own tasks, and the API key never leaks."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from flows.collect_statements import CollectStatementsParams, collect_statements
from hal_core.dialogue import SpeakerTags
from hal_core.judges import OpenAIJudgeConfig, RecordedJudgeConfig
from hal_core.judges.prompting import statement_messages
from hal_core.judging import JudgeConfigurationError
from hal_core.rating_cache import ProposalCache
from hal_core.settings import HalSettings
from tasks.derivation import extract_statements, load_statements
from tasks.validation import validate_dataset
from tests.fakes.logs import captured_logs
from tests.fakes.openai_server import FakeOpenAIServer, FaultPlan, item_key
from tests.integration.recorded_texts import recorded_texts

pytestmark = pytest.mark.integration

TAGS = SpeakerTags.turing()
KEY = "sk-hal-SECRET-statements-5be1d0c4"
FIRST_GAME, N_GAMES = 100, 40
PLAN = FaultPlan(  # seed 1 on games 100-139: 22 faulty first answers, 2 persistently invalid
    rate_limit=0.06,
    server_error=0.06,
    hang=0.03,
    broken_body=0.03,
    invalid_json=0.06,
    out_of_range=0.04,
    missing_ids=0.04,
    persistent_invalid=0.1,
    retry_after_s=0.1,
    hang_s=1.5,
    seed=1,
)
ENV = ("HAL_HOME", "HAL_DATA_DIR", "MLFLOW_TRACKING_URI", "HAL_JUDGE_API_KEY")


def _server_key(row) -> str:
    return item_key(
        statement_messages(row.conversation_A_transcript, row.conversation_B_transcript, TAGS)
    )


def _judge(server: FakeOpenAIServer, **overrides) -> OpenAIJudgeConfig:
    settings = {
        "model": "fake-gpt",
        "base_url": server.base_url,
        "concurrency": 8,
        "timeout_s": 1.0,
        "max_retries": 4,
        "backoff_base_s": 0.02,
        "backoff_max_s": 0.1,
        "price_prompt_per_mtok": 1.25,
        "price_completion_per_mtok": 10.0,
    }
    return OpenAIJudgeConfig(**(settings | overrides))


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory, data_dir: Path):
    """Two runs of the flow (fresh, then fully cached) against one faulty server."""
    root = tmp_path_factory.mktemp("statements")
    home = root / "home"
    games = pd.read_csv(data_dir / "turing/games.csv").iloc[FIRST_GAME : FIRST_GAME + N_GAMES]
    games = games.reset_index(drop=True)
    games_path = root / "games.csv"
    games.to_csv(games_path, index=False)

    saved = {name: os.environ.get(name) for name in ENV}
    os.environ.update(
        {"HAL_HOME": str(home), "HAL_DATA_DIR": str(data_dir), "HAL_JUDGE_API_KEY": KEY}
    )
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        with (
            captured_logs() as logs,
            FakeOpenAIServer(latency_s=0.005, faults=PLAN, api_key=KEY) as server,
        ):
            params = CollectStatementsParams(
                games_file=str(games_path), judge=_judge(server), chunk_size=16
            )
            started = time.monotonic()
            first = collect_statements(params)
            first_seconds = time.monotonic() - started
            server.wait_idle()
            first_records = server.records
            started = time.monotonic()
            second = collect_statements(
                params.model_copy(update={"output_file": str(root / "again.csv")})
            )
            second_seconds = time.monotonic() - started
            second_records = server.records
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    print(
        f"collect_statements on {N_GAMES} games: {first_seconds:.1f} s, cached rerun "
        f"{second_seconds:.1f} s"
    )
    return {
        "games": games,
        "first": first,
        "second": second,
        "first_table": pd.read_csv(first.output_file),
        "second_table": pd.read_csv(second.output_file),
        "first_records": first_records,
        "second_records": second_records,
        "logs": logs,
        "home": home,
        "settings": HalSettings(home=home, data_dir=data_dir),
    }


def test_every_game_ends_proposed_or_failed_with_a_reason(fault_run) -> None:
    games, table = fault_run["games"], fault_run["first_table"]
    records = fault_run["first_records"]
    keys = [_server_key(row) for row in games.itertuples()]

    first_attempts = [r for r in records if r.attempt == 1]
    faulty = sum(r.fault is not None for r in first_attempts)
    assert len(first_attempts) == N_GAMES
    assert faulty / N_GAMES >= 0.20
    failures = fault_run["first"].failures
    print(
        f"fault run: {N_GAMES} games, {faulty} faulty first answers ({faulty / N_GAMES:.0%}) "
        f"{dict(Counter(r.fault for r in first_attempts if r.fault))}, {len(records)} requests, "
        f"{len(table)} proposed, {len(failures)} failed"
    )

    # the failures are exactly the games the server never answered validly, with reasons
    persistent = {
        str(game_id)
        for game_id, key in zip(games["game_id"], keys, strict=True)
        if PLAN.kind_for(key) == "persistent_invalid"
    }
    assert persistent and {f["game_id"] for f in failures} == persistent
    assert all(f["error_kind"] == "invalid" for f in failures)
    assert all("after one repair request" in f["error"] for f in failures)
    # zero lost, zero duplicated: the other games, once each, in the games' order
    expected_ids = [str(g) for g in games["game_id"] if str(g) not in persistent]
    assert table["game_id"].astype(str).tolist() == expected_ids
    # nothing guessed: each verdict and statement list is the server's clean answer
    answers = {str(g): key for g, key in zip(games["game_id"], keys, strict=True)}
    for row in table.itertuples():
        key = answers[str(row.game_id)]
        assert row.aijudge_verdict == "AB"[int(key[0], 16) % 2]
        assert json.loads(row.human_characteristics) == [
            f"Statement {i} about the human ({key[:6]})." for i in (1, 2, 3)
        ]
    assert (table["elapsed_time"] > 0).all()
    # the games' own columns come through unchanged
    kept = games[games["game_id"].astype(str).isin(expected_ids)].reset_index(drop=True)
    pd.testing.assert_frame_equal(table[list(games.columns)], kept)
    # every request the server saw is accounted to exactly one cached game
    served = Counter(record.key for record in records)
    with ProposalCache(fault_run["home"] / "cache" / "ratings.sqlite") as cache:
        assert cache.counts() == {"proposed": N_GAMES - len(persistent), "failed": len(persistent)}
        stored = {p.game_id: p for p in cache.get_many(cache.keys()).values()}
    assert sorted(p.requests for p in stored.values()) == sorted(served[k] for k in keys)


def test_metrics_and_artifacts_are_recorded_in_mlflow(fault_run, tmp_path: Path) -> None:
    result, table, games = fault_run["first"], fault_run["first_table"], fault_run["games"]
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.run_name == "collect_statements"
    experiment = client.get_experiment(run.info.experiment_id).name
    assert experiment == fault_run["settings"].experiment_traits
    metrics = run.data.metrics
    assert metrics["proposed"] == len(table) and metrics["failures"] == len(result.failures)
    assert metrics["failures.invalid"] == len(result.failures)
    assert metrics["games"] == N_GAMES and metrics["cache_hits"] == 0
    assert metrics["requests"] == len(fault_run["first_records"])
    assert metrics["statements"] == 3 * len(table) and metrics["statements_per_game"] == 3.0
    assert metrics["tokens"] > 0 and metrics["estimated_cost_usd"] > 0
    assert 0 < metrics["latency_p50_s"] <= metrics["latency_p95_s"]
    right = table["aijudge_verdict"] == table["who_is_human"]
    assert metrics["verdict_accuracy"] == pytest.approx(right.mean())
    for model, group in table.groupby("ai_model"):
        hits = group["aijudge_verdict"] == group["who_is_human"]
        assert metrics[f"verdict_accuracy.{model}"] == pytest.approx(hits.mean())
    params = run.data.params
    assert params["judge.fingerprint"] == result.judge_fingerprint
    assert params["prompt_version"] == result.prompt_version
    assert params["judge.model"] == "fake-gpt" and len(params["input.games.sha256"]) == 64

    folder = Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, dst_path=str(tmp_path)))
    logged = pd.read_csv(folder / "tables" / Path(result.output_file).name)
    pd.testing.assert_frame_equal(logged, table)
    assert json.loads((folder / "failures.json").read_text()) == result.failures
    summary = json.loads((folder / "statements_summary.json").read_text())
    assert summary["judge"]["fingerprint"] == result.judge_fingerprint
    assert summary["inputs"]["games"] == params["input.games.sha256"]
    validation = sorted(p.parent.name for p in folder.rglob("validation_result.json"))
    assert validation == sorted(["games", Path(result.output_file).stem])  # input and output
    assert len(games) == N_GAMES


def test_a_cached_rerun_asks_nothing_and_writes_the_same_table(fault_run) -> None:
    assert len(fault_run["second_records"]) == len(fault_run["first_records"])
    metrics = MlflowClient().get_run(fault_run["second"].run_id).data.metrics
    assert metrics["requests"] == 0 and metrics["tokens"] == 0
    assert metrics["cache_hits"] == N_GAMES  # proposals and recorded failures alike
    assert fault_run["second"].failures == fault_run["first"].failures
    pd.testing.assert_frame_equal(fault_run["first_table"], fault_run["second_table"])


def test_the_output_loads_through_derive_traits_statement_tasks(fault_run) -> None:
    path = Path(fault_run["first"].output_file)
    frame = load_statements.fn(path)
    report = validate_dataset.fn(frame, "statements", "fail", fault_run["settings"])
    assert report.success and len(report.valid) == len(fault_run["first_table"])
    statements = extract_statements.fn(report.valid, "fail")
    assert len(statements.texts) == 3 * len(report.valid)
    assert len(statements.quarantined) == 0
    assert statements.statements["statement_id"].is_unique


def test_the_api_key_never_reaches_mlflow_or_logs(fault_run, tmp_path: Path) -> None:
    first, second = fault_run["first"], fault_run["second"]
    run_ids = [first.run_id, second.run_id]
    texts = list(fault_run["logs"]) + recorded_texts(run_ids, tmp_path, "statements_summary.json")
    texts += [json.dumps(result.model_dump()) for result in (first, second)]
    home = fault_run["home"]
    texts += [p.read_bytes().decode("utf-8", "replace") for p in home.rglob("*.csv")]
    texts += [p.read_bytes().decode("utf-8", "replace") for p in home.rglob("*.sqlite*")]
    assert not [text[:200] for text in texts if KEY in text]
    assert any("judge.api_key_env" in text for text in texts)  # we did scan params


def test_a_wrong_key_stops_the_run_at_once_without_a_retry(
    settings, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    monkeypatch.setenv("HAL_JUDGE_API_KEY", KEY)
    with FakeOpenAIServer(api_key="sk-the-right-one") as server:
        state = collect_statements(
            CollectStatementsParams(
                judge=_judge(server),
                limit=5,
                cache_file=str(tmp_path / "cache.sqlite"),
                output_file=str(tmp_path / "never.csv"),
            ),
            return_state=True,
        )
    error = state.result(raise_on_failure=False)
    assert state.is_failed() and isinstance(error, JudgeConfigurationError)
    assert "HTTP 401" in str(error) and KEY not in str(error)
    with get_client(sync_client=True) as prefect:
        runs = prefect.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    [proposing] = [run for run in runs if run.name.startswith("propose_with_judge")]
    assert proposing.state.is_failed() and proposing.run_count == 1  # never retried
    assert not (tmp_path / "never.csv").exists()


@pytest.fixture(scope="module")
def recorded_run(hal_home: Path, data_dir: Path, tmp_path_factory):
    """The paper's GPT-5 statements replayed through the flow over all 557 games."""
    judge = RecordedJudgeConfig(statements_paths=["turing/statements_gpt-5.csv"])
    cache = tmp_path_factory.mktemp("recorded") / "cache.sqlite"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HAL_HOME", str(hal_home))
        patch.setenv("HAL_DATA_DIR", str(data_dir))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("HAL_TRACKING_URI", raising=False)
        started = time.monotonic()
        result = collect_statements(CollectStatementsParams(judge=judge, cache_file=str(cache)))
        print(f"recorded collection of 557 games: {time.monotonic() - started:.1f} s")
    return result


@pytest.mark.slow
def test_the_recorded_judge_reproduces_the_published_gpt5_statements(
    recorded_run, settings, data_dir: Path
) -> None:
    result = recorded_run
    table = pd.read_csv(result.output_file)
    games = pd.read_csv(data_dir / "turing/games.csv")
    published = pd.read_csv(data_dir / "turing/statements_gpt-5.csv").set_index("game_id")
    assert len(table) == 557 and result.failures == []
    pd.testing.assert_frame_equal(table[list(games.columns)], games)  # the games, in order
    recorded = published.loc[table["game_id"]]
    assert table["aijudge_verdict"].tolist() == recorded["aijudge_verdict"].tolist()
    np.testing.assert_allclose(table["elapsed_time"], recorded["elapsed_time"])
    assert [json.loads(cell) for cell in table["human_characteristics"]] == [
        json.loads(cell) for cell in recorded["human_characteristics"]
    ]
    metrics = result.metrics
    truth = published["aijudge_verdict"] == published["who_is_human"]
    assert metrics["proposed"] == 557 and metrics["requests"] == 0
    assert metrics["statements"] == 2735
    assert metrics["verdict_accuracy"] == pytest.approx(truth.mean())
    assert Path(result.output_file).parent == settings.home_dir / "statements"
    assert Path(result.output_file).name == f"games-{result.judge_fingerprint[:12]}.csv"

    # derive_traits' own loading reads exactly the published statements
    ours = extract_statements.fn(load_statements.fn(Path(result.output_file)), "fail")
    theirs = extract_statements.fn(
        load_statements.fn(data_dir / "turing/statements_gpt-5.csv"), "fail"
    )
    pairs = ["statement_id", "text"]
    pd.testing.assert_frame_equal(
        ours.statements[pairs].sort_values("statement_id").reset_index(drop=True),
        theirs.statements[pairs].sort_values("statement_id").reset_index(drop=True),
    )


@pytest.mark.slow
def test_the_pipeline_derives_traits_from_what_a_live_judge_collected(
    recorded_run, settings
) -> None:
    from flows.derive_traits import DeriveTraitsParams
    from flows.pipeline import PipelineParams, hal_pipeline

    judge = RecordedJudgeConfig(statements_paths=["turing/statements_gpt-5.csv"])
    started = time.monotonic()
    result = hal_pipeline(
        PipelineParams(
            stages=["collect_statements", "derive_traits"],
            use_cache=False,
            collect_statements=CollectStatementsParams(judge=judge),
            derive_traits=DeriveTraitsParams(seeds=[0, 1]),
        )
    )
    print(f"pipeline: collect statements + derive traits: {time.monotonic() - started:.1f} s")
    collected = result.stages["collect_statements"]
    assert collected["output_file"] == recorded_run.output_file  # same judge, games and name
    derived = MlflowClient().get_run(result.stages["derive_traits"]["run_id"])
    assert derived.data.tags["mlflow.parentRunId"] == result.run_id
    metrics = result.stages["derive_traits"]["metrics"]
    assert metrics["n_statements"] == 2735 and metrics["n_games"] == 557
    assert metrics["quarantined_rows"] == 0
    assert metrics["n_traits"] >= 25 and metrics["coverage.n_at_0.60"] >= 30


def test_the_cli_collects_statements_from_an_endpoint(settings, tmp_path, monkeypatch) -> None:
    from click.testing import CliRunner

    from hal_cli.commands import app

    games_path = tmp_path / "six_games.csv"
    pd.read_csv(settings.data_path("turing/games.csv")).head(6).to_csv(games_path, index=False)
    output = tmp_path / "statements.csv"
    monkeypatch.setenv("HAL_JUDGE_API_KEY", KEY)
    with FakeOpenAIServer(api_key=KEY) as server:
        invoked = CliRunner().invoke(
            app,
            [
                "collect-statements",
                str(games_path),
                "--base-url",
                server.base_url,
                "--model",
                "fake-judge",
                "--output",
                str(output),
            ],
        )
        requests = len(server.records)
    assert invoked.exit_code == 0, invoked.output
    result = json.loads(invoked.output[invoked.output.index('{\n  "run_id"') :])
    assert result["metrics"]["proposed"] == 6 and requests == 6
    table = pd.read_csv(output)
    assert table["game_id"].tolist() == pd.read_csv(games_path)["game_id"].tolist()
    assert all(len(json.loads(cell)) >= 3 for cell in table["human_characteristics"])


def test_a_run_where_every_game_fails_is_an_error_with_the_reasons(
    settings, tmp_path, monkeypatch
) -> None:
    from hal_core.judging import JudgeError

    monkeypatch.setenv("HAL_JUDGE_API_KEY", KEY)
    games_path = tmp_path / "three_games.csv"
    pd.read_csv(settings.data_path("turing/games.csv")).head(3).to_csv(games_path, index=False)
    always_invalid = FaultPlan(persistent_invalid=1.0)
    with (
        FakeOpenAIServer(faults=always_invalid, api_key=KEY) as server,
        pytest.raises(JudgeError, match="none of 3 games") as caught,
    ):
        collect_statements(
            CollectStatementsParams(
                games_file=str(games_path),
                judge=OpenAIJudgeConfig(model="fake-judge", base_url=server.base_url),
                output_file=str(tmp_path / "none.csv"),
                cache_file=str(tmp_path / "fresh.sqlite"),
            )
        )
    assert "after one repair request" in str(caught.value)
