"""Statement collection: games parsed with file/row/rule errors, each game asked once through
the cache, a killed run resumed without asking finished games again, and a table that trait
derivation reads unchanged."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest

from hal_core.derivation import collect_statements, statement_cell_problems
from hal_core.dialogue import SpeakerTags
from hal_core.judging import Game, JudgeError, StatementProposal
from hal_core.rating_cache import ProposalCache, RatingCache, proposal_key
from hal_core.statements import (
    failure_kind,
    game_sha256,
    games_from_table,
    proposal_metrics,
    propose_cached,
    statement_prompt_version,
    statements_table,
)
from hal_core.tables import TableError, read_table
from tasks.validation import check_contract

TAGS = SpeakerTags.turing()


class ScriptedProposer:
    """Verdict A for even games, B for odd; a transcript containing ``fail`` fails (kind
    ``kind``); the process dies after ``die_after`` games when set."""

    def __init__(
        self, kind: str = "transient", die_after: int | None = None, kill: bool = False
    ) -> None:
        self.asked: list[str] = []
        self.kind = kind
        self.die_after = die_after
        self.kill = kill

    def fingerprint(self) -> str:
        return "scripted-v1"

    def propose_statements(
        self, games: Sequence[Game], tags: SpeakerTags
    ) -> list[StatementProposal]:
        proposals = []
        for game in games:
            if self.die_after is not None and len(self.asked) == self.die_after:
                if self.kill:
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError("judge process died")
            self.asked.append(game.game_id)
            if "fail" in game.transcript_a:
                proposals.append(
                    StatementProposal(game_id=game.game_id, error="boom", error_kind=self.kind)
                )
                continue
            number = int(game.transcript_a.rsplit(" ", 1)[-1])
            proposals.append(
                StatementProposal(
                    game_id=game.game_id,
                    verdict="AB"[number % 2],
                    statements=[f"Mentions {number}.", f"Types casually ({number})."],
                    prompt_tokens=100,
                    completion_tokens=20,
                    requests=1,
                    latency_s=0.5,
                )
            )
        return proposals


def _games(n: int, start: int = 0) -> list[Game]:
    return [
        Game(game_id=f"g{i}", transcript_a=f"I: hi\nW: game {i}", transcript_b=f"I: yo\nW: {i}")
        for i in range(start, start + n)
    ]


def _write(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "games.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


# -- games -----------------------------------------------------------------------------------


def test_games_come_from_the_real_games_table_in_row_order(data_dir: Path) -> None:
    table = read_table(data_dir / "turing/games.csv")
    games = games_from_table(table)
    assert len(games) == 557
    assert [g.game_id for g in games[:3]] == [str(i) for i in table["game_id"][:3]]
    assert games[0].transcript_b == table["conversation_B_transcript"][0]


def test_bad_game_rows_are_named_by_file_row_and_rule(tmp_path: Path) -> None:
    good = {"conversation_A_transcript": "I: hi\nW: yo", "conversation_B_transcript": "I: a\nW: b"}
    path = _write(
        tmp_path,
        [
            {"game_id": 1, **good},
            {"game_id": None, **good},
            {"game_id": 1, **good},
            {"game_id": 4, **good, "conversation_B_transcript": "   "},
            {"game_id": 5, **good, "conversation_A_transcript": None},
        ],
    )
    with pytest.raises(TableError) as caught:
        games_from_table(read_table(path))
    message = str(caught.value)
    assert f"{path}: 4 bad game rows" in message
    assert "row 2: game_id is empty (rule: every game has an id)" in message
    assert "row 3: game_id 1 repeats row 1 (rule: game ids are unique)" in message
    assert "row 4: conversation_B_transcript is empty" in message
    assert "row 5: conversation_A_transcript is empty" in message


def test_a_games_table_without_transcripts_is_refused_with_the_rule(tmp_path: Path) -> None:
    path = _write(tmp_path, [{"game_id": 1, "conversation_A_transcript": "I: a\nW: b"}])
    with pytest.raises(TableError, match=r"games\.csv: no column\(s\) \['conversation_B"):
        games_from_table(read_table(path))


# -- proposing through the cache ------------------------------------------------------------


def test_each_distinct_game_is_asked_once_and_every_row_gets_its_own_id(tmp_path: Path) -> None:
    games = [
        *_games(3),
        Game(game_id="copy", transcript_a="I: hi\nW: game 1", transcript_b="I: yo\nW: 1"),
    ]
    judge = ScriptedProposer()
    with ProposalCache(tmp_path / "c.sqlite") as cache:
        run = propose_cached(judge, games, TAGS, cache, chunk_size=2)
    assert judge.asked == ["g0", "g1", "g2"]
    assert run.proposal_for_row(3).game_id == "copy"
    assert run.proposal_for_row(3).statements == run.proposal_for_row(1).statements
    assert (run.stats.games, run.stats.unique, run.stats.proposed) == (4, 3, 4)
    assert run.stats.requests == 3 and run.stats.prompt_tokens == 300


def test_a_judge_that_dies_mid_run_loses_at_most_one_chunk(tmp_path: Path) -> None:
    games = _games(50)
    path = tmp_path / "c.sqlite"
    dying = ScriptedProposer(die_after=23)
    with ProposalCache(path) as cache, pytest.raises(RuntimeError, match="died"):
        propose_cached(dying, games, TAGS, cache, chunk_size=10)
    with ProposalCache(path) as cache:
        committed = cache.counts()
        again = ScriptedProposer()
        run = propose_cached(again, games, TAGS, cache, chunk_size=10)
    assert committed == {"proposed": 20}  # two whole chunks; the third died with the judge
    assert again.asked == [f"g{i}" for i in range(20, 50)]  # only what is missing
    assert run.stats.cache_hits == 20 and run.stats.requested == 30
    assert all(run.proposal_for_row(i).ok for i in range(50))


class StreamingScriptedProposer(ScriptedProposer):
    """The same answers, reported one by one in reverse order (as an async judge finishes
    them out of order)."""

    def propose_streaming(self, games, tags, on_result) -> None:
        for position in reversed(range(len(games))):
            [proposal] = self.propose_statements([games[position]], tags)
            on_result(position, proposal)


def test_a_streaming_judge_commits_every_game_as_it_arrives(tmp_path: Path) -> None:
    games = _games(50)
    path = tmp_path / "c.sqlite"
    with ProposalCache(path) as cache, pytest.raises(RuntimeError, match="died"):
        propose_cached(StreamingScriptedProposer(die_after=23), games, TAGS, cache, chunk_size=10)
    with ProposalCache(path) as cache:
        committed = cache.counts()
        again = StreamingScriptedProposer()
        run = propose_cached(again, games, TAGS, cache, chunk_size=10)
    assert committed == {"proposed": 23}  # no chunk barrier: every answer before the death
    assert sorted(again.asked, key=lambda g: int(g[1:])) == [f"g{i}" for i in range(27)]
    assert run.stats.cache_hits == 23 and run.stats.requested == 27
    assert [run.proposal_for_row(i).verdict for i in range(50)] == ["AB"[i % 2] for i in range(50)]


def _propose_until_killed(path: Path, games: list[Game]) -> None:
    with ProposalCache(path) as cache:
        propose_cached(ScriptedProposer(die_after=37, kill=True), games, TAGS, cache, chunk_size=8)


def test_a_sigkilled_run_resumes_without_asking_finished_games_again(tmp_path: Path) -> None:
    games = _games(60)
    path = tmp_path / "c.sqlite"
    child = multiprocessing.get_context("fork").Process(
        target=_propose_until_killed, args=(path, games)
    )
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    with ProposalCache(path) as cache:
        assert cache.counts() == {"proposed": 32}  # 4 chunks of 8 committed before game 37
        again = ScriptedProposer()
        run = propose_cached(again, games, TAGS, cache, chunk_size=8)
        assert len(cache.keys()) == 60  # no duplicates
    assert again.asked == [f"g{i}" for i in range(32, 60)]
    assert run.stats.cache_hits == 32


def test_failures_are_stored_with_their_reason_and_retried_by_policy(tmp_path: Path) -> None:
    games = [*_games(2), Game(game_id="bad", transcript_a="I: x\nW: fail", transcript_b="I: x")]
    path = tmp_path / "c.sqlite"
    with ProposalCache(path) as cache:
        first = propose_cached(ScriptedProposer(kind="invalid"), games, TAGS, cache)
        stored = cache.get_many([first.keys[2]])[first.keys[2]]
    assert (stored.error, stored.error_kind) == ("boom", "invalid")
    assert first.stats.failures_by_kind == {"invalid": 1}
    for policy, asked in (("none", []), ("transient", []), ("all", ["bad"])):
        judge = ScriptedProposer(kind="transient")
        with ProposalCache(path) as cache:
            propose_cached(judge, games, TAGS, cache, retry_failures=policy)
        assert judge.asked == asked, policy
    judge = ScriptedProposer()
    with ProposalCache(path) as cache:  # now stored as transient: the default retries it
        propose_cached(judge, games, TAGS, cache)
        assert cache.get_many([first.keys[2]])[first.keys[2]].requests == 0
    assert judge.asked == ["bad"]


def test_a_stored_proposal_is_never_replaced_by_a_failure(tmp_path: Path) -> None:
    ok = StatementProposal(game_id="g", verdict="B", statements=["Laughs."], requests=1)
    failed = StatementProposal(game_id="g", error="late", error_kind="transient", requests=2)
    with ProposalCache(tmp_path / "c.sqlite") as cache:
        cache.put_many([("k", ok, "h")], judge="j", version="p")
        cache.put_many([("k", failed, "h")], judge="j", version="p")
        assert cache.get_many(["k"])["k"] == ok
        assert cache.counts() == {"proposed": 1}

    class RacedProposer(ScriptedProposer):
        """Fails, while another run stores a proposal for the same game meanwhile."""

        def propose_statements(self, games, tags):
            key = proposal_key(
                "scripted-v1", statement_prompt_version(tags), game_sha256(games[0], tags)
            )
            with ProposalCache(tmp_path / "c.sqlite") as other:
                other.put_many([(key, ok, "h")], judge="j", version="p")
            return [
                StatementProposal(game_id=g.game_id, error="429", error_kind="transient")
                for g in games
            ]

    with ProposalCache(tmp_path / "c.sqlite") as cache:
        run = propose_cached(RacedProposer(), _games(1), TAGS, cache)
    assert run.proposal_for_row(0).statements == ["Laughs."]
    assert run.stats.proposed == 1


def test_the_rating_table_and_the_proposal_table_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "ratings.sqlite"
    with RatingCache(path) as ratings, ProposalCache(path) as proposals:
        assert ratings.counts() == {} and proposals.counts() == {}
    with sqlite3.connect(path) as connection:
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master")}
        assert {"rating", "proposal"} <= tables
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_unusable_answers_become_failures_and_missing_ones_are_recorded_not_raised(
    tmp_path: Path,
) -> None:
    class Sloppy(ScriptedProposer):
        def propose_statements(self, games, tags):
            return [
                StatementProposal(game_id=games[0].game_id, verdict="c", statements=["x"]),
                StatementProposal(game_id=games[1].game_id, verdict="b", statements=[" ", "Hi."]),
                StatementProposal(game_id=games[2].game_id, verdict="A", statements=["  "]),
                StatementProposal(game_id=games[3].game_id, error="transient: HTTP 500"),
            ]

    run = propose_cached(Sloppy(), _games(4), TAGS)
    kinds = [failure_kind(run.proposal_for_row(i)) for i in range(4)]
    assert [run.proposal_for_row(i).ok for i in range(4)] == [False, True, False, False]
    assert kinds[0] == kinds[2] == "invalid" and kinds[3] == "transient"
    assert run.proposal_for_row(1).verdict == "B" and run.proposal_for_row(1).statements == ["Hi."]

    class SkipsTheMiddle(ScriptedProposer):
        def propose_statements(self, games, tags):
            return super().propose_statements([games[0], games[2]], tags)

    path = tmp_path / "c.sqlite"
    with ProposalCache(path) as cache:  # fixed: this used to raise and lose the chunk
        run = propose_cached(SkipsTheMiddle(), _games(3), TAGS, cache)
    missing = run.proposal_for_row(1)
    assert [run.proposal_for_row(i).ok for i in range(3)] == [True, False, True]
    assert (missing.error_kind, missing.error) == (
        "transient",
        "the judge gave no answer for this game",
    )
    assert run.stats.failures_by_kind == {"transient": 1}
    with ProposalCache(path) as cache:  # recorded, and asked again by the next run
        assert cache.counts() == {"proposed": 2, "failed": 1}
        again = ScriptedProposer()
        assert propose_cached(again, _games(3), TAGS, cache).stats.proposed == 3
    assert again.asked == ["g1"]

    class AnswersAnotherGame(ScriptedProposer):
        def propose_statements(self, games, tags):
            return super().propose_statements(_games(1, start=7), tags)

    with pytest.raises(JudgeError, match="answered game g7, which it was not asked about"):
        propose_cached(AnswersAnotherGame(), _games(3), TAGS)


def test_the_cache_key_follows_judge_transcripts_and_speaker_tags() -> None:
    game = _games(1)[0]
    respaced = game.model_copy(update={"transcript_a": game.transcript_a + "  \n\n"})
    assert game_sha256(game, TAGS) == game_sha256(respaced, TAGS)
    swapped = Game(game_id="g0", transcript_a=game.transcript_b, transcript_b=game.transcript_a)
    assert game_sha256(game, TAGS) != game_sha256(swapped, TAGS)
    other_tags = SpeakerTags(rated=("H",), others=("I",))
    assert game_sha256(game, TAGS) != game_sha256(game, other_tags)
    assert statement_prompt_version(TAGS) != statement_prompt_version(other_tags)
    assert statement_prompt_version(TAGS).startswith("hal-statements-prompt-v1+")


# -- the statements table --------------------------------------------------------------------


@pytest.fixture()
def collected(data_dir: Path, tmp_path: Path):
    """The first 12 real games, game 3 failing; the table saved as CSV."""
    table = read_table(data_dir / "turing/games.csv").head(12)
    games = [
        Game(
            game_id=g.game_id,
            transcript_a=("I: fail" if i == 3 else f"I: game {i}"),
            transcript_b=g.transcript_b,
        )
        for i, g in enumerate(games_from_table(table))
    ]
    run = propose_cached(ScriptedProposer(kind="invalid"), games, TAGS)
    statements, failures = statements_table(table, run)
    path = tmp_path / "statements.csv"
    statements.to_csv(path, index=False)
    return {
        "table": table,
        "run": run,
        "statements": statements,
        "failures": failures,
        "path": path,
    }


def test_the_table_has_the_recorded_format_and_failures_apart(collected) -> None:
    table, statements, failures = (collected[k] for k in ("table", "statements", "failures"))
    games_columns = [c for c in table.columns if c != "_row"]
    assert list(statements.columns) == [
        *games_columns,
        "aijudge_verdict",
        "human_characteristics",
        "elapsed_time",
    ]
    assert (
        len(statements) == 11
        and str(table["game_id"][3]) not in statements["game_id"].astype(str).tolist()
    )
    assert failures.to_dict(orient="records") == [
        {"game_id": str(table["game_id"][3]), "error_kind": "invalid", "error": "boom"}
    ]
    assert statements["human_characteristics"][0] == '["Mentions 0.","Types casually (0)."]'
    assert statements["elapsed_time"].tolist() == [0.5] * 11


def test_the_saved_table_passes_the_statements_contract_and_derivation(collected, tmp_path) -> None:
    written = read_table(collected["path"])
    report = check_contract(written, "statements", "fail", tmp_path / "validation")
    assert report.success, report.error
    assert statement_cell_problems(written) == []
    extracted = collect_statements(written)
    assert len(extracted) == 22
    assert extracted["text"].tolist()[:2] == ["Mentions 0.", "Types casually (0)."]
    assert extracted["statement_id"].tolist()[:2] == [
        f"{written['game_id'][0]}:1",
        f"{written['game_id'][0]}:2",
    ]


def test_metrics_count_statements_and_score_verdicts_against_the_human(collected) -> None:
    table, statements = collected["table"], collected["statements"]
    metrics = proposal_metrics(collected["run"], table)
    truth = statements["who_is_human"] == statements["aijudge_verdict"]
    assert metrics["proposed"] == 11 and metrics["failures"] == 1
    assert metrics["failures.invalid"] == 1
    assert metrics["statements"] == 22 and metrics["statements_per_game"] == 2.0
    assert metrics["verdict_accuracy"] == pytest.approx(truth.mean())
    for model, group in statements.groupby("ai_model"):
        assert metrics[f"verdict_accuracy.{model}"] == pytest.approx(
            (group["who_is_human"] == group["aijudge_verdict"]).mean()
        )
    assert metrics["tokens"] == 11 * 120 and metrics["latency_p50_s"] == 0.5


def test_a_judge_that_names_its_failure_kind_in_the_message_is_understood() -> None:
    assert failure_kind(StatementProposal(game_id="g", error="invalid: bad JSON")) == "invalid"
    assert failure_kind(StatementProposal(game_id="g", error="no recorded statements")) == "unknown"
    assert (
        failure_kind(StatementProposal(game_id="g", error="x", error_kind="rejected")) == "rejected"
    )


def test_the_statement_rule_is_one_rule_for_answers_contracts_and_derivation() -> None:
    """Until tasks/contracts.py and hal_core/derivation.py import it, their copies must agree."""
    import json

    import jsonschema

    from hal_core.statements import (
        STATEMENTS_JSON_SCHEMA,
        statement_cell_problem,
        statements_problem,
    )

    cells = [
        '["Types in lowercase.", "Makes typos."]',
        "[]",
        '["fine", "   "]',
        '["fine", 3]',
        '"just text"',
        "not json at all",
        None,
        float("nan"),
    ]
    frame = pd.DataFrame(
        {
            "_row": range(1, len(cells) + 1),
            "game_id": range(len(cells)),
            "human_characteristics": cells,
        }
    )
    derived = {p.row: (p.rule, p.detail) for p in statement_cell_problems(frame)}
    for row, cell in enumerate(cells, start=1):
        ours = statement_cell_problem(cell)
        assert ours == derived.get(row), cell  # derivation's copy
        parsed = json.loads(cell) if isinstance(cell, str) and cell[:1] in '["' else None
        schema_ok = parsed is not None and jsonschema.Draft7Validator(
            STATEMENTS_JSON_SCHEMA
        ).is_valid(parsed)
        assert (ours is None) == schema_ok, cell  # the contract's JSON schema
        if parsed is not None and isinstance(parsed, list):
            assert statements_problem(parsed) == ours
    from tasks import contracts

    [schema] = [
        rule.json_schema
        for rule in contracts.get_contract("statements").expectations()
        if getattr(rule, "column", None) == "human_characteristics__json"
        and hasattr(rule, "json_schema")
    ]
    assert schema == STATEMENTS_JSON_SCHEMA  # the contract's copy
