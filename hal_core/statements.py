"""Live statement collection: a judge reads each Turing game, guesses the human witness and
says what gave them away; the answers become a statements table for trait derivation.

Proposals go through the runner that rating uses (:func:`hal_core.judges.runner.ask_cached`)
and the same SQLite file (:class:`ProposalCache`), keyed by the judge's fingerprint, the
statement prompt's version and the hash of both transcripts. Each distinct game is asked once;
a streaming judge's answers are committed as they arrive, any other judge's after every chunk
of games, so a killed run loses at most what was in flight and a rerun asks only for what is
missing. Failures are stored with their reason and kind and asked again only when the caller's
policy says so; a stored proposal is never replaced by a failure. Nothing is guessed: a game
the judge could not answer is left out of the statements table and listed, with its reason,
in the failures table.

What a usable answer is - a verdict in :data:`VERDICTS` and a non-empty list of non-blank
statements - is written once here (:func:`statements_problem`, :func:`statement_cell_problem`,
:data:`STATEMENTS_JSON_SCHEMA`) for the statements contract and trait derivation to import.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from hal_core.dialogue import SpeakerTags
from hal_core.judges.prompting import canonical_json, normalize_text, statement_messages
from hal_core.judges.runner import (
    JudgeRun,
    Question,
    RetryPolicy,
    RunPlan,
    ask_cached,
    failure_kind,
)
from hal_core.judging import (
    Game,
    JudgeError,
    JudgeRunStats,
    StatementProposal,
    StatementProposer,
    StreamingProposer,
)
from hal_core.rating_cache import ProposalCache
from hal_core.tables import ROW_COLUMN, TableError, parse_list_cell

STATEMENT_PROMPT_VERSION = "hal-statements-prompt-v1"
"""Bump when the statement prompt's wording changes: part of every proposal's cache key (a
digest of the prompt as built is added to it too, so an unbumped rewording is still a new
entry)."""

GAME_COLUMNS = ("game_id", "conversation_A_transcript", "conversation_B_transcript")
VERDICT_COLUMN = "aijudge_verdict"
STATEMENTS_COLUMN = "human_characteristics"
ELAPSED_COLUMN = "elapsed_time"
FAILURE_COLUMNS = ("game_id", "error_kind", "error")


# --------------------------------------------------------------------------------------------
# Games


def _game_id(value: object) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def games_from_table(table: pd.DataFrame) -> list[Game]:
    """One :class:`Game` per row of a games table, in row order.

    Raises :class:`TableError` naming the file, rows and rule when a column is missing, a game
    id is empty or repeats, or a transcript is not text.
    """
    source = table.attrs.get("source", "<table>")
    missing = [column for column in GAME_COLUMNS if column not in table.columns]
    if missing:
        raise TableError(
            f"{source}: no column(s) {missing} (rule: a games table has {', '.join(GAME_COLUMNS)})"
        )
    rows = table[ROW_COLUMN].tolist() if ROW_COLUMN in table else list(range(1, len(table) + 1))
    problems: list[str] = []
    games: list[Game] = []
    seen: dict[str, int] = {}
    for row, game_id, text_a, text_b in zip(
        rows,
        table["game_id"],
        table["conversation_A_transcript"],
        table["conversation_B_transcript"],
        strict=True,
    ):
        found = _game_id(game_id)
        broken = []
        if found is None:
            broken.append("game_id is empty (rule: every game has an id)")
        elif found in seen:
            broken.append(f"game_id {found} repeats row {seen[found]} (rule: game ids are unique)")
        else:
            seen[found] = row
        for side, text in (("A", text_a), ("B", text_b)):
            if not isinstance(text, str) or not text.strip():
                broken.append(
                    f"conversation_{side}_transcript is empty or not text "
                    "(rule: both witnesses' transcripts are text)"
                )
        if broken:
            problems += [f"{source} row {row}: {problem}" for problem in broken]
        else:
            games.append(Game(game_id=found, transcript_a=text_a, transcript_b=text_b))
    if problems:
        shown = "\n".join(f"  - {problem}" for problem in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise TableError(f"{source}: {len(problems)} bad game rows:\n{shown}{more}")
    return games


def game_sha256(game: Game, tags: SpeakerTags) -> str:
    """Hash of what the judge reads: both transcripts (whitespace-normalized) and who is who."""
    header = canonical_json({"rated": tags.rated, "others": tags.others})
    body = f"{normalize_text(game.transcript_a)}\x00{normalize_text(game.transcript_b)}"
    return hashlib.sha256(f"{header}\n{body}".encode()).hexdigest()


def statement_prompt_version(tags: SpeakerTags) -> str:
    """The prompt constant plus a digest of the statement prompt as it is built today."""
    probe = statement_messages("I: hello\nW: hi", "I: hello\nW: hey", tags)
    digest = hashlib.sha256(canonical_json(probe).encode()).hexdigest()[:12]
    return f"{STATEMENT_PROMPT_VERSION}+{digest}"


# --------------------------------------------------------------------------------------------
# The statement rules: what a usable answer is (one home; contracts and derivation read it)


VERDICTS = ("A", "B")
"""A verdict names the witness the judge thinks is human."""

RULE_MISSING = "missing cell"
RULE_NOT_LIST = "not a JSON list"
RULE_EMPTY = "empty list"
RULE_NON_STRING = "non-string item"
RULE_BLANK = "blank item"

STATEMENTS_JSON_SCHEMA: dict = {
    "type": "array",
    "minItems": 1,
    "items": {"type": "string", "minLength": 1, "pattern": r"\S"},
}
"""The rule below as JSON Schema, for a Great Expectations contract on the list cell."""


def statements_problem(items: object) -> tuple[str, str] | None:
    """(rule, detail) when a parsed statements value is not a non-empty list of non-blank
    strings; None when it is."""
    if items is None:
        return RULE_MISSING, "no statements"
    if not isinstance(items, list):
        return RULE_NOT_LIST, f"{str(items)[:60]!r}"
    if not items:
        return RULE_EMPTY, "no statements in the list"
    for position, item in enumerate(items, start=1):
        if not isinstance(item, str):
            return RULE_NON_STRING, f"item {position} is {type(item).__name__}: {item!r:.40}"
        if not item.strip():
            return RULE_BLANK, f"item {position} is blank"
    return None


def statement_cell_problem(cell: object) -> tuple[str, str] | None:
    """(rule, detail) when a statements table cell (a JSON list, as written to CSV) breaks
    the rule of :func:`statements_problem`; None when it holds a usable list."""
    if cell is None or (isinstance(cell, float) and np.isnan(cell)):
        return RULE_MISSING, "no statements"
    items = parse_list_cell(cell)
    if items is None:
        return RULE_NOT_LIST, f"{str(cell)[:60]!r}"
    return statements_problem(items)


# --------------------------------------------------------------------------------------------
# Proposing through the cache


@dataclass
class ProposalStats(JudgeRunStats):
    """What a collection run did, for metrics (per input row unless said otherwise)."""

    @property
    def games(self) -> int:
        return self.items

    @property
    def proposed(self) -> int:
        return self.answered


@dataclass
class ProposalRun(JudgeRun[StatementProposal]):
    """Per input game: the cache key and the final proposal (or failure)."""

    game_ids: list[str] = field(default_factory=list)

    @property
    def prompt_version(self) -> str:
        return self.version

    def proposal_for_row(self, row: int) -> StatementProposal:
        return self.answer_for_row(row).model_copy(update={"game_id": self.game_ids[row]})


def _checked(answer: StatementProposal, game: Game) -> StatementProposal:
    """The answer as stored: a verdict in :data:`VERDICTS` and statements that keep the rule
    once blank ones are dropped, or a failure of kind ``invalid``."""
    if answer.game_id != game.game_id:
        raise JudgeError(f"judge answered game {answer.game_id} when asked for {game.game_id}")
    if not answer.ok:
        if answer.error is None:
            return answer.model_copy(update={"error": "no verdict", "error_kind": "invalid"})
        return answer.model_copy(update={"verdict": None, "statements": []})
    verdict = answer.verdict.strip().upper()
    statements = [s for s in answer.statements if isinstance(s, str) and s.strip()]
    problem = None
    if verdict not in VERDICTS:
        problem = f"verdict {answer.verdict!r} is not 'A' or 'B'"
    elif (broken := statements_problem(statements)) is not None:
        problem = f"statements: {broken[0]} ({broken[1]})"
    if problem is not None:
        return answer.model_copy(
            update={"verdict": None, "statements": [], "error": problem, "error_kind": "invalid"}
        )
    return answer.model_copy(update={"verdict": verdict, "statements": statements})


def statement_question(
    proposer: StatementProposer, tags: SpeakerTags
) -> Question[Game, StatementProposal]:
    """Reading a game and saying what gave the human away, as a question for ``ask_cached``."""
    streaming = None
    if isinstance(proposer, StreamingProposer):

        def streaming(games, ids, on_answer) -> None:
            proposer.propose_streaming(games, tags, on_answer)

    estimate = getattr(proposer, "estimate_statements", None)
    return Question(
        noun="game",
        content_sha256=lambda game: game_sha256(game, tags),
        item_id=lambda game, key: game.game_id,
        answer_id=lambda proposal: proposal.game_id,
        ask=lambda games, ids: proposer.propose_statements(games, tags),
        accept=lambda proposal, game, key: _checked(proposal, game),
        failure=lambda game, key, reason, kind: StatementProposal(
            game_id=game.game_id, error=reason, error_kind=kind
        ),
        ask_streaming=streaming,
        estimate=(lambda games: estimate(games, tags)) if estimate else None,
    )


def propose_cached(
    proposer: StatementProposer,
    games: Sequence[Game],
    tags: SpeakerTags,
    cache: ProposalCache | None = None,
    *,
    chunk_size: int = 32,
    retry_failures: RetryPolicy = "transient",
    on_progress: Callable[[int, int], None] | None = None,
    on_plan: Callable[[RunPlan], None] | None = None,
) -> ProposalRun:
    """Propose statements for every game, serving finished ones from ``cache``
    (:func:`hal_core.judges.runner.ask_cached`).

    Games with the same transcripts are asked once. A streaming proposer's answers are committed
    as they arrive; any other proposer's after every chunk of ``chunk_size`` games.
    """
    fingerprint = proposer.fingerprint()
    version = statement_prompt_version(tags)
    stats = ProposalStats()
    keys, results = ask_cached(
        statement_question(proposer, tags),
        games,
        stats,
        fingerprint=fingerprint,
        version=version,
        cache=cache,
        retry_failures=retry_failures,
        chunk_size=chunk_size,
        on_progress=on_progress,
        on_plan=on_plan,
    )
    return ProposalRun(keys, results, stats, fingerprint, version, [g.game_id for g in games])


# --------------------------------------------------------------------------------------------
# The statements table and its metrics


def statements_table(
    games_table: pd.DataFrame, run: ProposalRun
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(statements, failures) for the rows of ``games_table`` that ``run`` answered.

    Statements: the games' columns plus ``aijudge_verdict``, ``human_characteristics`` (a JSON
    list) and ``elapsed_time`` (the judge's seconds for the game), one row per proposed game -
    the format of ``turing/statements_*.csv``. Failures: ``game_id``, ``error_kind``,
    ``error`` per game left out.
    """
    if len(games_table) != len(run.keys):
        raise ValueError(f"{len(games_table)} games in the table, {len(run.keys)} in the run")
    added = (VERDICT_COLUMN, STATEMENTS_COLUMN, ELAPSED_COLUMN)
    columns = [c for c in games_table.columns if c != ROW_COLUMN and c not in added]
    proposals = [run.proposal_for_row(row) for row in range(len(run.keys))]
    ok = np.array([p.ok for p in proposals], dtype=bool)
    table = games_table.loc[ok, columns].copy()
    answered = [p for p in proposals if p.ok]
    table[VERDICT_COLUMN] = [p.verdict for p in answered]
    table[STATEMENTS_COLUMN] = [canonical_json(p.statements) for p in answered]
    table[ELAPSED_COLUMN] = pd.array([p.latency_s for p in answered], dtype="Float64")
    failures = pd.DataFrame(
        [
            {"game_id": p.game_id, "error_kind": failure_kind(p), "error": p.error}
            for p in proposals
            if not p.ok
        ],
        columns=list(FAILURE_COLUMNS),
    )
    return table.reset_index(drop=True), failures


def _metric_name(text: object) -> str:
    return re.sub(r"[^\w\-. /]", "_", str(text))


def proposal_metrics(run: ProposalRun, games_table: pd.DataFrame) -> dict[str, float]:
    """Counts, tokens, latency, statements per game, and how often the judge's verdict named
    the human (``verdict_accuracy``, and ``verdict_accuracy.<ai_model>`` per opponent)."""
    stats = run.stats
    metrics: dict[str, float] = {
        "games": stats.games,
        "unique_games": stats.unique,
        "proposed": stats.proposed,
        **stats.usage_metrics(),
    }
    proposals = [run.proposal_for_row(row) for row in range(len(run.keys))]
    answered = [p for p in proposals if p.ok]
    counts = [len(p.statements) for p in answered]
    metrics["statements"] = sum(counts)
    metrics["statements_per_game"] = float(np.mean(counts)) if counts else float("nan")
    if "who_is_human" in games_table.columns and answered:
        ok = np.array([p.ok for p in proposals], dtype=bool)
        verdicts = pd.Series([p.verdict for p in answered])
        truth = games_table["who_is_human"].astype(str).str.strip().str.upper()[ok]
        correct = verdicts.to_numpy() == truth.to_numpy()
        metrics["verdict_accuracy"] = float(correct.mean())
        if "ai_model" in games_table.columns:
            models = games_table["ai_model"][ok].astype(str).to_numpy()
            for model in sorted(set(models)):
                metrics[f"verdict_accuracy.{_metric_name(model)}"] = float(
                    correct[models == model].mean()
                )
    return {key: float(value) for key, value in metrics.items() if not np.isnan(value)}
