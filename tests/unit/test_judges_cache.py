"""The rating cache and runner: each text asked once, results kept, failures recorded."""

from __future__ import annotations

import multiprocessing
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from hal_core.dialogue import SpeakerTags, has_rated_speaker
from hal_core.judges import LocalJudgeConfig, build_judge, rate_cached, ratings_table
from hal_core.judges.config import load_judge_config
from hal_core.judges.runner import rated_text_sha256
from hal_core.judging import JudgeConfigurationError, RatingResult
from hal_core.questionnaire import Questionnaire, Trait
from hal_core.rating_cache import RatingCache, rating_key

TAGS = SpeakerTags.turing()
MINI = Questionnaire(name="mini", traits=(Trait(id="t01", text="a"), Trait(id="t02", text="b")))


class CountingJudge:
    """A plain (non-streaming) judge: rates by text length, fails texts containing 'fail'."""

    def __init__(self, kind: str = "transient") -> None:
        self.asked: list[str] = []
        self.kind = kind

    def fingerprint(self) -> str:
        return "counting-v1"

    def rate(
        self,
        dialogues: Sequence[str],
        questionnaire: Questionnaire,
        tags: SpeakerTags,
        item_ids: Sequence[str] | None = None,
    ) -> list[RatingResult]:
        self.asked.extend(dialogues)
        results = []
        for item_id, text in zip(item_ids, dialogues, strict=True):
            if not has_rated_speaker(text, tags):
                results.append(RatingResult(item_id=item_id, error="no W", error_kind="input"))
            elif "fail" in text:
                results.append(RatingResult(item_id=item_id, error="boom", error_kind=self.kind))
            else:
                value = float(len(text) % 5 + 1)
                results.append(
                    RatingResult(
                        item_id=item_id,
                        ratings={t: value for t in questionnaire.trait_ids},
                        requests=1,
                        prompt_tokens=10,
                        latency_s=0.01,
                    )
                )
        return results


DIALOGUES = ["I: a\nW: one", "I: b\nW: two!", "I: a\nW: one", "I: c\nW: fail", "I: nobody"]


def test_duplicates_are_asked_once_and_every_row_is_accounted(tmp_path: Path) -> None:
    judge = CountingJudge()
    with RatingCache(tmp_path / "c.sqlite") as cache:
        run = rate_cached(judge, DIALOGUES, MINI, TAGS, cache, chunk_size=2)
    assert len(judge.asked) == 4  # the duplicate is asked once
    table = ratings_table(run, MINI, ["a", "b", "c", "d", "e"])
    assert table["item_id"].tolist() == ["a", "b", "c", "d", "e"]
    assert table["status"].tolist() == ["rated", "rated", "rated", "failed", "failed"]
    assert table["error_kind"].tolist()[3:] == ["transient", "input"]
    assert table.loc[0, "t01"] == table.loc[2, "t01"] and str(table["t01"].dtype) == "Int64"
    assert run.stats.rated == 3 and run.stats.failed == 2 and run.stats.requested == 4


def test_rerun_serves_finished_items_from_cache_and_retries_by_policy(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with RatingCache(path) as cache:
        rate_cached(CountingJudge(), DIALOGUES, MINI, TAGS, cache)
    again = CountingJudge()
    with RatingCache(path) as cache:
        run = rate_cached(again, DIALOGUES, MINI, TAGS, cache, retry_failures="transient")
    assert again.asked == ["I: c\nW: fail"]  # only the transient failure is asked again
    assert run.stats.cache_hits == 3  # two ratings and the input failure
    untouched = CountingJudge()
    with RatingCache(path) as cache:
        run = rate_cached(untouched, DIALOGUES, MINI, TAGS, cache, retry_failures="none")
    assert untouched.asked == [] and run.stats.requests == 0
    assert all(result.cached for result in run.results.values())


def test_a_stored_rating_is_never_replaced_by_a_failure(tmp_path: Path) -> None:
    with RatingCache(tmp_path / "c.sqlite") as cache:
        rated = RatingResult(item_id="k", ratings={"t01": 3.0, "t02": 4.0}, requests=1)
        failed = RatingResult(item_id="k", error="late", error_kind="transient", requests=2)
        cache.put("k", rated, judge="j", questionnaire="q", text_sha256="h")
        cache.put("k", failed, judge="j", questionnaire="q", text_sha256="h")
        [stored] = cache.get_many(["k"]).values()
        assert stored.ok and stored.ratings == {"t01": 3.0, "t02": 4.0} and stored.cached
        assert cache.counts() == {"rated": 1}
    with sqlite3.connect(tmp_path / "c.sqlite") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_cache_key_changes_with_judge_and_questionnaire(tmp_path: Path) -> None:
    with RatingCache(tmp_path / "c.sqlite") as cache:
        first = rate_cached(CountingJudge(), DIALOGUES[:1], MINI, TAGS, cache)
        other = rate_cached(CountingJudge(), DIALOGUES[:1], MINI.subset(["t01"]), TAGS, cache)
    assert first.keys != other.keys and other.stats.cache_hits == 0


def test_judge_configs_load_from_yaml_with_defaults_and_forbid_unknown_keys(
    tmp_path: Path,
) -> None:
    path = tmp_path / "judge.yaml"
    path.write_text("model: gpt-5-mini\nconcurrency: 64\n")
    config = load_judge_config(path)
    assert config.backend == "openai" and config.concurrency == 64
    path.write_text("backend: hf\nmodel_path: /m\ntemperature: 0.1\n")
    with pytest.raises(ValueError, match="temperature"):
        load_judge_config(path)


def test_local_backend_is_resolved_lazily_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys
    import types

    config = LocalJudgeConfig(model_path="/models/local", options={"batch_size": 4})
    try:
        importlib.import_module("hal_core.local_judge")
    except ImportError:
        with pytest.raises(JudgeConfigurationError, match=r"hal_core\.local_judge"):
            build_judge(config)
    fake = types.ModuleType("hal_core.local_judge")

    class LocalJudge(CountingJudge):
        @classmethod
        def from_path(cls, model_path: str, **options: object) -> LocalJudge:
            judge = cls()
            judge.origin = (model_path, options)
            return judge

    fake.LocalJudge = LocalJudge
    monkeypatch.setitem(sys.modules, "hal_core.local_judge", fake)
    judge = build_judge(config)
    assert isinstance(judge, LocalJudge)
    assert judge.origin == ("/models/local", {"batch_size": 4})


def test_a_failing_cache_write_stops_the_run_and_earlier_commits_persist(tmp_path: Path) -> None:
    class DiskFullAfterTwo(RatingCache):
        def put_many(self, entries, **kwargs) -> None:
            for entry in entries:  # the disk fills up after the second answer
                if len(self.keys()) >= 2:
                    raise sqlite3.OperationalError("database or disk is full")
                super().put_many([entry], **kwargs)

    texts = [f"I: hi {i}\nW: hello number {i}" for i in range(200)]
    with (
        DiskFullAfterTwo(tmp_path / "c.sqlite") as cache,
        pytest.raises(sqlite3.OperationalError, match="disk is full"),
    ):
        rate_cached(CountingJudge(), texts, MINI, TAGS, cache, chunk_size=1)
    with RatingCache(tmp_path / "c.sqlite") as reopened:
        assert reopened.counts() == {"rated": 2}


# -- answers that gain fields, and old cache files ---------------------------------------------


class ExtendedResult(RatingResult):
    """A rating with an optional field added later (the local judge's out-of-domain signal)."""

    domain_distance: float | None = None


class ExtendedCache(RatingCache):
    ANSWER = ExtendedResult


def test_optional_fields_an_answer_gains_round_trip_through_the_cache(tmp_path: Path) -> None:
    far = ExtendedResult(item_id="k1", ratings={"t01": 2.0, "t02": 3.0}, domain_distance=0.75)
    plain = ExtendedResult(item_id="k2", ratings={"t01": 1.0, "t02": 1.0})
    with ExtendedCache(tmp_path / "c.sqlite") as cache:
        cache.put_many([("k1", far, "h1"), ("k2", plain, "h2")], judge="j", version="q")
        stored = cache.get_many(["k1", "k2"])
    assert stored["k1"].domain_distance == 0.75 and stored["k2"].domain_distance is None
    assert stored["k1"].ratings == far.ratings and stored["k1"].cached
    with RatingCache(tmp_path / "c.sqlite") as older:  # code without the field still reads it
        assert older.get_many(["k1"])["k1"].ratings == far.ratings


def test_a_cache_file_written_before_the_extra_column_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as connection:  # the schema the cache had before
        connection.execute(
            "CREATE TABLE rating (key TEXT PRIMARY KEY, judge TEXT NOT NULL, questionnaire TEXT "
            "NOT NULL, text_sha256 TEXT NOT NULL, status TEXT NOT NULL CHECK (status IN "
            "('rated', 'failed')), ratings TEXT, expected TEXT, error TEXT, error_kind TEXT, "
            "prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL "
            "DEFAULT 0, latency_s REAL, requests INTEGER NOT NULL DEFAULT 0, created_at REAL NOT "
            "NULL, updated_at REAL NOT NULL)"
        )
        connection.execute(
            "INSERT INTO rating VALUES ('k', 'j', 'q', 'h', 'rated', '{\"t01\": 4.0}', NULL, "
            "NULL, NULL, 12, 3, 0.5, 1, 0, 0)"
        )
    with ExtendedCache(path) as cache:
        old = cache.get_many(["k"])["k"]
        cache.put(
            "n",
            ExtendedResult(item_id="n", ratings={"t01": 1.0}, domain_distance=2.5),
            judge="j",
            questionnaire="q",
            text_sha256="h2",
        )
        new = cache.get_many(["n"])["n"]
    assert (old.ratings, old.prompt_tokens, old.requests) == ({"t01": 4.0}, 12, 1)
    assert new.domain_distance == 2.5


# -- two runs on one cache ---------------------------------------------------------------------


def _keys(texts: list[str]) -> list[str]:
    return [rating_key("counting-v1", MINI.version, rated_text_sha256(t, TAGS)) for t in texts]


def test_a_dead_runs_claim_is_taken_over_and_a_live_runs_is_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    texts = ["I: a\nW: one", "I: b\nW: two!"]
    keys = _keys(texts)
    with RatingCache(path) as cache:
        cache.claim([keys[0]], "elsewhere:1:gone", lease_s=-1)  # lease ran out: its run died
        cache.claim([keys[1]], "elsewhere:2:busy", lease_s=60)  # a live run, about to answer
    answer = RatingResult(item_id=keys[1], ratings={"t01": 5.0, "t02": 5.0}, requests=1)

    def the_other_run_answers() -> None:
        time.sleep(0.3)
        with RatingCache(path) as other:
            other.put(
                keys[1],
                answer,
                judge="counting-v1",
                questionnaire=MINI.version,
                text_sha256=rated_text_sha256(texts[1], TAGS),
            )
            other.release("elsewhere:2:busy")

    judge = CountingJudge()
    other = threading.Thread(target=the_other_run_answers)
    with RatingCache(path) as cache:
        other.start()
        run = rate_cached(judge, texts, MINI, TAGS, cache)
        other.join()
        assert cache.claim_owners() == set()  # taken over, then released with the run
    assert judge.asked == [texts[0]]  # the dead run's item; the live run's was read back
    assert run.result_for_row(1).ratings == {"t01": 5.0, "t02": 5.0}
    assert (run.stats.claimed_elsewhere, run.stats.requested, run.stats.rated) == (1, 1, 2)


def test_a_killed_run_on_this_host_frees_its_claims_at_once(tmp_path: Path) -> None:
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    owner = f"{socket.gethostname()}:{int(finished.stdout)}:killed"
    texts = ["I: a\nW: one", "I: b\nW: two!"]
    with RatingCache(tmp_path / "c.sqlite") as cache:
        cache.claim(_keys(texts), owner, lease_s=3600)
        judge = CountingJudge()
        run = rate_cached(judge, texts, MINI, TAGS, cache)
    assert judge.asked == texts and run.stats.claimed_elsewhere == 0


def test_a_failure_never_hides_a_rating_another_run_stored_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    text = "I: c\nW: fail"
    rated = RatingResult(item_id="x", ratings={"t01": 2.0, "t02": 2.0}, requests=1)

    class RacedJudge(CountingJudge):
        def rate(self, dialogues, questionnaire, tags, item_ids=None):
            with RatingCache(path) as other:  # another run rates it while we fail it
                other.put(item_ids[0], rated, judge="j", questionnaire="q", text_sha256="h")
            return super().rate(dialogues, questionnaire, tags, item_ids)

    with RatingCache(path) as cache:
        run = rate_cached(RacedJudge(), [text], MINI, TAGS, cache)
    assert run.result_for_row(0).ratings == {"t01": 2.0, "t02": 2.0} and run.stats.rated == 1


def _rate_in_another_process(cache_path: str, base_url: str, texts: list[str], ready, go, out):
    from hal_core.judges import OpenAIJudgeConfig

    config = OpenAIJudgeConfig(model="fake-judge", base_url=base_url, concurrency=8, timeout_s=10)
    judge = build_judge(config, api_key="sk-two-runs-test")
    with RatingCache(cache_path) as cache:
        ready.wait()
        go.wait(60)
        run = rate_cached(judge, texts, MINI, TAGS, cache)
    out.put(
        {
            "requested": run.stats.requested,
            "waited": run.stats.claimed_elsewhere,
            "ratings": [run.result_for_row(i).ratings for i in range(len(texts))],
        }
    )


def test_two_runs_on_one_cache_ask_for_each_item_once(tmp_path: Path) -> None:
    import hal_core.judges.openai_judge  # noqa: F401 - imported once, before forking
    from tests.fakes.openai_server import FakeOpenAIServer

    texts = [f"I: hi {i}\nW: hello, i am number {i}" for i in range(200)]
    fork = multiprocessing.get_context("fork")  # forked before the server thread starts
    ready, go, out = fork.Barrier(3), fork.Event(), fork.Queue()
    server = FakeOpenAIServer(latency_s=0.02, api_key="sk-two-runs-test")
    runs = [
        fork.Process(
            target=_rate_in_another_process,
            args=(str(tmp_path / "c.sqlite"), server.base_url, texts, ready, go, out),
        )
        for _ in range(2)
    ]
    for run in runs:
        run.start()
    with server:
        ready.wait(60)  # both processes have their cache open: start together
        go.set()
        results = [out.get(timeout=120) for _ in runs]
        for run in runs:
            run.join(30)
        attempts = server.attempts()
    assert [run.exitcode for run in runs] == [0, 0]
    assert len(attempts) == 200 and set(attempts.values()) == {1}  # was: 120 asked twice
    assert sum(r["requested"] for r in results) == 200
    assert results[0]["ratings"] == results[1]["ratings"] and None not in results[0]["ratings"]
    print(
        f"two runs: requested {[r['requested'] for r in results]}, waited for the other "
        f"{[r['waited'] for r in results]}"
    )
