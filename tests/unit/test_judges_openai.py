"""The OpenAI-compatible judge against a local fake server that injects faults."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from hal_core.dialogue import SpeakerTags
from hal_core.judges import OpenAIJudgeConfig, build_judge
from hal_core.judges.prompting import rating_messages, render_dialogue
from hal_core.judging import Game, JudgeConfigurationError, JudgeUnreachableError
from hal_core.questionnaire import Questionnaire, Trait
from tests.fakes.openai_server import FakeOpenAIServer, FaultPlan, expected_rating, item_key

KEY = "sk-unit-test-key-0123456789"
TAGS = SpeakerTags.turing()
QUESTIONNAIRE = Questionnaire(
    name="mini",
    traits=tuple(Trait(id=f"t{i:02d}", text=f"Statement number {i}.") for i in range(1, 7)),
)


def _dialogues(n: int) -> list[str]:
    return [f"I: hello there {i}\nW: hey, im number {i} lol\nI: ok\nW: bye" for i in range(n)]


def _judge(server: FakeOpenAIServer, **overrides):
    settings = {
        "model": "fake-judge",
        "base_url": server.base_url,
        "concurrency": 8,
        "timeout_s": 0.4,
        "max_retries": 3,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        **overrides,
    }
    return build_judge(OpenAIJudgeConfig(**settings), api_key=KEY)


def _key_of(dialogue: str) -> str:
    rendered = render_dialogue(dialogue, TAGS)
    return item_key(rating_messages(rendered, QUESTIONNAIRE, TAGS))


def _expected(dialogue: str) -> dict[str, float]:
    key = _key_of(dialogue)
    return {t: float(expected_rating(key, t)) for t in QUESTIONNAIRE.trait_ids}


@pytest.mark.parametrize("fault", ["rate_limit", "server_error", "hang", "broken_body"])
def test_transient_faults_are_retried_until_rated(fault: str) -> None:
    plan = FaultPlan(**{fault: 1.0}, retry_after_s=0.3, hang_s=1.0)
    dialogue = _dialogues(1)[0]
    with FakeOpenAIServer(faults=plan, api_key=KEY) as server:
        started = time.monotonic()
        [result] = _judge(server).rate([dialogue], QUESTIONNAIRE, TAGS, ["a"])
        elapsed = time.monotonic() - started
        server.wait_idle()
        records = server.records
    assert result.ok, result.error
    assert result.ratings == _expected(dialogue)
    assert result.requests == 2 and [r.attempt for r in records] == [1, 2]
    assert records[0].fault == fault
    if fault == "rate_limit":  # Retry-After (0.3 s) honoured, not the 10 ms backoff
        assert records[1].started - records[0].finished >= 0.3
    if fault == "hang":  # the client gave up at its timeout, not when the server answered
        assert elapsed < 1.0


@pytest.mark.parametrize("fault", ["invalid_json", "out_of_range", "missing_ids"])
def test_malformed_reply_gets_exactly_one_repair_request(fault: str) -> None:
    dialogue = _dialogues(1)[0]
    with FakeOpenAIServer(faults=FaultPlan(**{fault: 1.0}), api_key=KEY) as server:
        [result] = _judge(server).rate([dialogue], QUESTIONNAIRE, TAGS)
        records = server.records
    assert result.ok and result.ratings == _expected(dialogue)
    assert result.requests == 2 and records[0].fault == fault and records[1].fault is None


def test_reply_still_invalid_after_repair_is_a_recorded_failure() -> None:
    with FakeOpenAIServer(faults=FaultPlan(persistent_invalid=1.0), api_key=KEY) as server:
        [result] = _judge(server).rate(_dialogues(1), QUESTIONNAIRE, TAGS)
        requests = len(server.records)
    assert not result.ok and result.ratings is None
    assert result.error_kind == "invalid"
    assert "after one repair request" in result.error and "outside 1-5" in result.error
    assert result.requests == requests == 2


def test_exhausted_retries_are_a_transient_failure_with_the_reason() -> None:
    with FakeOpenAIServer(faults=FaultPlan(server_error=1.0), api_key=KEY) as server:
        [result] = _judge(server, max_retries=0).rate(_dialogues(1), QUESTIONNAIRE, TAGS)
    assert result.error_kind == "transient"
    assert result.error == "HTTP 500; gave up after 1 attempts"


def test_wrong_key_stops_the_run_without_revealing_the_key() -> None:
    with (
        FakeOpenAIServer(api_key="sk-other") as server,
        pytest.raises(JudgeConfigurationError, match="HTTP 401") as caught,
    ):
        _judge(server).rate(_dialogues(20), QUESTIONNAIRE, TAGS)
    assert KEY not in str(caught.value)


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_requests_stay_within_the_concurrency_bound_and_usage_is_recorded(transport: str) -> None:
    dialogues = _dialogues(40)
    with FakeOpenAIServer(latency_s=0.05, api_key=KEY) as server:
        judge = _judge(server, concurrency=4, http_transport=transport)
        results = judge.rate(dialogues, QUESTIONNAIRE, TAGS)
        peak = server.max_in_flight
    assert peak == 4
    assert [r.ratings for r in results] == [_expected(d) for d in dialogues]
    assert all(r.prompt_tokens > 0 and r.completion_tokens > 0 for r in results)
    assert all(r.latency_s >= 0.05 for r in results)


def test_streaming_reports_each_item_once_and_input_errors_without_a_request() -> None:
    dialogues = [*_dialogues(5), "I: is anyone there?"]
    seen: list[int] = []
    with FakeOpenAIServer(api_key=KEY) as server:
        _judge(server).rate_streaming(
            dialogues, QUESTIONNAIRE, TAGS, None, lambda i, r: seen.append((i, r))
        )
        requests = len(server.records)
    assert sorted(i for i, _ in seen) == list(range(6))
    failed = next(r for i, r in seen if i == 5)
    assert failed.error_kind == "input" and failed.requests == 0
    assert requests == 5


def test_statements_are_proposed_per_game() -> None:
    games = [
        Game(game_id=f"g{i}", transcript_a=d, transcript_b=d + "!")
        for i, d in enumerate(_dialogues(3))
    ]
    with FakeOpenAIServer(faults=FaultPlan(invalid_json=0.5), api_key=KEY) as server:
        proposals = _judge(server).propose_statements(games, TAGS)
    assert [p.game_id for p in proposals] == ["g0", "g1", "g2"]
    assert all(p.ok and p.verdict in {"A", "B"} and len(p.statements) == 3 for p in proposals)


def test_fingerprint_ignores_speed_settings_but_not_the_model() -> None:
    base = OpenAIJudgeConfig(model="m")
    assert base.fingerprint() == OpenAIJudgeConfig(model="m", concurrency=99).fingerprint()
    assert base.fingerprint() != OpenAIJudgeConfig(model="n").fingerprint()
    assert base.fingerprint() != OpenAIJudgeConfig(model="m", temperature=0.0).fingerprint()


def test_request_body_carries_the_schema_sampling_settings_and_unicode_messages() -> None:
    dialogue = "I: ça va?\nW: oui 😅 trop bien"
    with FakeOpenAIServer(api_key=KEY) as server:
        judge = _judge(server, temperature=0.0, seed=7, max_completion_tokens=300)
        [result] = judge.rate([dialogue], QUESTIONNAIRE, TAGS)
        headers, body = server.last_request
    assert result.ok
    assert {k.lower(): v for k, v in headers.items()}["content-type"] == "application/json"
    assert body["model"] == "fake-judge"
    assert (body["temperature"], body["seed"], body["max_completion_tokens"]) == (0.0, 7, 300)
    schema = body["response_format"]["json_schema"]["schema"]
    assert sorted(schema["properties"]["ratings"]["required"]) == list(QUESTIONNAIRE.trait_ids)
    expected = rating_messages(render_dialogue(dialogue, TAGS), QUESTIONNAIRE, TAGS)
    assert body["messages"] == expected
    assert "😅" in body["messages"][-1]["content"]


def test_the_event_loop_runs_with_old_objects_frozen_and_thaws_them_after() -> None:
    import gc

    from hal_core.judges.asyncio_bridge import run_sync

    async def frozen_count() -> int:
        return gc.get_freeze_count()

    assert gc.get_freeze_count() == 0
    assert run_sync(frozen_count()) > 1000
    assert gc.get_freeze_count() == 0


def test_complete_returns_free_text_with_the_judges_retries() -> None:
    prompt = "Clusters:\n\n[c01] size 12\nrepresentative: Uses slang.\n- says lol\n"
    with FakeOpenAIServer(faults=FaultPlan(server_error=1.0), api_key=KEY) as server:
        reply = _judge(server).complete(prompt)
        attempts = [record.status for record in server.records]
    assert json.loads(reply)["traits"][0]["clusters"] == ["c01"]
    assert attempts == [500, 200]
    with FakeOpenAIServer(api_key="sk-other") as server, pytest.raises(JudgeConfigurationError):
        _judge(server).complete(prompt)


# -- an endpoint that is down, and prompts over the cap ----------------------------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_a_refused_connection_is_reported_as_refused_not_as_a_timeout(transport: str) -> None:
    port = _closed_port()
    config = OpenAIJudgeConfig(
        model="m",
        base_url=f"http://127.0.0.1:{port}/v1",
        max_retries=1,
        backoff_base_s=0.01,
        stop_after_failures=0,
        http_transport=transport,
    )
    [result] = build_judge(config, api_key=KEY).rate(_dialogues(1), QUESTIONNAIRE, TAGS)
    assert (result.error_kind, result.requests) == ("transient", 2)
    assert result.error == f"connection refused by 127.0.0.1:{port}; gave up after 2 attempts"


def test_a_closed_port_stops_the_run_early_naming_the_endpoint_and_the_cause() -> None:
    port = _closed_port()
    # the defaults of the run (16 in flight, 7 attempts, backoff from 1 s): 48 items
    # used to take minutes, each "timed out after 180 s"
    config = OpenAIJudgeConfig(model="m", base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(JudgeUnreachableError) as caught:
        build_judge(config, api_key=KEY).rate(_dialogues(48), QUESTIONNAIRE, TAGS)
    message = str(caught.value)
    assert isinstance(caught.value, JudgeConfigurationError)  # not retried by the task
    assert f"m at http://127.0.0.1:{port}/v1: 8 retried requests in a row failed" in message
    assert f"connection refused by 127.0.0.1:{port}" in message and "timed out" not in message


def test_an_endpoint_that_answers_every_request_with_503_stops_after_a_few_requests() -> None:
    with FakeOpenAIServer(faults=FaultPlan(always_status=503), api_key=KEY) as server:
        judge = _judge(server, concurrency=4, max_retries=3, stop_after_failures=8)
        with pytest.raises(JudgeUnreachableError, match=r"failed \(HTTP 503"):
            judge.rate(_dialogues(40), QUESTIONNAIRE, TAGS)
        server.wait_idle()
        requests = len(server.records)
    assert requests <= 2 * (8 + 4)  # asking every item 4 times would be 160 requests


def test_first_answer_faults_on_every_item_do_not_stop_a_working_endpoint() -> None:
    dialogues = _dialogues(12)
    with FakeOpenAIServer(faults=FaultPlan(server_error=1.0), api_key=KEY) as server:
        results = _judge(server, concurrency=4, stop_after_failures=2).rate(
            dialogues, QUESTIONNAIRE, TAGS
        )
    assert [r.ratings for r in results] == [_expected(d) for d in dialogues]
    assert all(r.requests == 2 for r in results)


def test_an_over_long_dialogue_fails_as_input_without_a_request_and_is_estimated_first() -> None:
    short = _dialogues(1)[0]
    long = "I: tell me everything\n" + "W: " + "and then we went on and on " * 7500
    assert len(long) > 200_000
    with FakeOpenAIServer(api_key=KEY) as server:
        judge = _judge(
            server, max_input_chars=50_000, price_prompt_per_mtok=2.0, price_completion_per_mtok=8.0
        )
        estimate = judge.estimate_ratings([short, long], QUESTIONNAIRE, TAGS)
        results = judge.rate([short, long], QUESTIONNAIRE, TAGS)
        requests = len(server.records)
    assert requests == 1 and results[0].ok
    failed = results[1]
    assert (failed.error_kind, failed.requests) == ("input", 0)
    size = sum(
        len(m["content"]) for m in rating_messages(render_dialogue(long, TAGS), QUESTIONNAIRE, TAGS)
    )
    assert f"the prompt has {size:,} characters" in failed.error
    assert "max_input_chars=50,000: not sent" in failed.error
    assert set(estimate.refused) == {1} and estimate.refused[1] == failed.error
    sent = sum(
        len(m["content"])
        for m in rating_messages(render_dialogue(short, TAGS), QUESTIONNAIRE, TAGS)
    )
    assert estimate.items == 1 and estimate.prompt_tokens == sent // 4
    assert estimate.completion_tokens > 0
    assert estimate.cost_usd == pytest.approx(
        (2.0 * estimate.prompt_tokens + 8.0 * estimate.completion_tokens) / 1e6
    )


def test_a_run_tells_its_estimate_first_and_a_raised_cap_sends_what_was_refused(
    tmp_path: Path,
) -> None:
    from hal_core.judges import rate_cached
    from hal_core.rating_cache import RatingCache

    dialogues = [*_dialogues(3), "I: so?\n" + "W: " + "words upon words " * 800]
    plans = []
    with FakeOpenAIServer(api_key=KEY) as server, RatingCache(tmp_path / "c.sqlite") as cache:
        capped = _judge(server, max_input_chars=5_000, price_prompt_per_mtok=1.25)
        run = rate_cached(capped, dialogues, QUESTIONNAIRE, TAGS, cache, on_plan=plans.append)
        assert len(server.records) == 3 and run.stats.failures_by_kind == {"input": 1}
        assert cache.counts() == {"rated": 3}  # our cap, not the judge's answer: not stored
        [plan] = plans
        assert (plan.to_ask, plan.cache_hits) == (4, 0)
        assert plan.estimate.items == 3 and plan.estimate.cost_usd > 0
        assert "1 over the input cap, not sent" in plan.describe() and "$" in plan.describe()
        uncapped = _judge(server, max_input_chars=None)
        assert uncapped.fingerprint() == capped.fingerprint()
        again = rate_cached(uncapped, dialogues, QUESTIONNAIRE, TAGS, cache)
        assert len(server.records) == 4 and again.stats.cache_hits == 3
    assert again.result_for_row(3).ok
