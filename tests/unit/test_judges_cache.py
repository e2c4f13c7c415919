"""The rating cache and runner: each text asked once, results kept, failures recorded."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from hal_core.dialogue import SpeakerTags, has_rated_speaker
from hal_core.judges import LocalJudgeConfig, build_judge, rate_cached, ratings_table
from hal_core.judges.config import load_judge_config
from hal_core.judging import JudgeConfigurationError, RatingResult
from hal_core.questionnaire import Questionnaire, Trait
from hal_core.rating_cache import RatingCache

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
