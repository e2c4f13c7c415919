"""Ask a judge about each item through the cache: the one algorithm behind rating dialogues
(:func:`rate_cached`) and collecting statements (``hal_core.statements.propose_cached``).

:func:`ask_cached` keys every item by its content, serves finished ones from the cache, lets
one policy decide which stored failures are asked again, claims what it will ask so that a
second run on the same file does not pay for it too, asks the judge (streaming when it can,
else in chunks), commits answers as they arrive on one background writer (a few
milliseconds later, many to a transaction), and ends every input answered or failed with its
reason: an answer the judge never gave is recorded as a ``transient`` failure (asked again by
the next run), never raised and never dropped.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar, get_args

import pandas as pd

from hal_core.dialogue import SpeakerTags
from hal_core.domain import DOMAIN_DISTANCE_COLUMN, OUT_OF_DOMAIN_COLUMN
from hal_core.judges.prompting import canonical_json, normalize_text
from hal_core.judging import (
    ErrorKind,
    Judge,
    JudgeError,
    JudgeRunStats,
    RatingResult,
    StatementProposal,
    StreamingJudge,
    UsageEstimate,
)
from hal_core.questionnaire import Questionnaire
from hal_core.rating_cache import AnswerStore, RatingCache, answer_key
from hal_core.scoring import (
    ERROR_COLUMN,
    FAILED_STATUS,
    ID_COLUMN,
    KIND_COLUMN,
    RATED_STATUS,
    STATUS_COLUMN,
)

RetryPolicy = Literal["none", "transient", "all"]
UNKNOWN_KIND = "unknown"
NO_ANSWER_KIND: ErrorKind = "transient"
"""Kind of the failure recorded for an item the judge gave no answer for: asked again next run."""
CLAIM_LEASE_S = 60.0
"""How long a claim holds without its run's heartbeat (a run killed on another host)."""

A = TypeVar("A", RatingResult, StatementProposal)
Item = TypeVar("Item")
StreamAsk = Callable[[Sequence[Item], Sequence[str], Callable[[int, A], None]], None]
"""(items, ids, on_answer(position, answer)): asks about items, reporting each answer once."""


def failure_kind(answer: RatingResult | StatementProposal) -> str:
    """The failure's kind; from a ``"<kind>: reason"`` message for backends that set none."""
    if answer.error_kind is not None:
        return answer.error_kind
    head, colon, _ = (answer.error or "").partition(":")
    return head if colon and head in get_args(ErrorKind) else UNKNOWN_KIND


def should_retry(answer: RatingResult | StatementProposal, policy: RetryPolicy) -> bool:
    """Whether a stored answer is asked again: never a good one; failures by ``policy``."""
    if answer.ok or policy == "none":
        return False
    return policy == "all" or failure_kind(answer) == "transient"


@dataclass(frozen=True)
class Question(Generic[Item, A]):
    """One kind of question a judge answers about items, as :func:`ask_cached` needs it."""

    noun: str
    """What an item is called in messages ("dialogue", "game")."""
    content_sha256: Callable[[Item], str]
    """Hash of what the judge reads about an item (part of its cache key)."""
    item_id: Callable[[Item, str], str]
    """(item, cache key) -> the id the judge is given and answers with."""
    answer_id: Callable[[A], str]
    ask: Callable[[Sequence[Item], Sequence[str]], Sequence[A]]
    """(items, ids) -> one answer per item, in order (or fewer: the rest count as missing)."""
    accept: Callable[[A, Item, str], A]
    """(answer, item, key) -> the answer as stored; raises JudgeError on a wrong answer."""
    failure: Callable[[Item, str, str, ErrorKind], A]
    """(item, key, reason, kind) -> a failed answer."""
    ask_streaming: StreamAsk[Item, A] | None = None
    """(items, ids, on_answer(position, answer)) for judges that report answers as they come."""
    estimate: Callable[[Sequence[Item]], UsageEstimate] | None = None
    """Cost of asking about items, and which the judge will refuse (API judges)."""


@dataclass(frozen=True)
class RunPlan:
    """What a run is about to do, told before the first request (for logs)."""

    noun: str
    items: int
    unique: int
    cache_hits: int
    to_ask: int
    claimed_elsewhere: int
    estimate: UsageEstimate | None = None

    def describe(self) -> str:
        text = (
            f"{self.items} {self.noun}s ({self.unique} distinct): {self.cache_hits} from the "
            f"cache, {self.to_ask} to ask"
        )
        if self.claimed_elsewhere:
            text += f", {self.claimed_elsewhere} being asked by another run (waited for)"
        if self.estimate is not None and self.to_ask:
            text += f"; estimated {self.estimate.describe()}"
        return text


@dataclass
class JudgeRun(Generic[A]):
    """Per input row: the cache key; per key: the final answer (or failure)."""

    keys: list[str]
    results: dict[str, A]
    stats: JudgeRunStats
    fingerprint: str
    version: str

    def answer_for_row(self, row: int) -> A:
        return self.results[self.keys[row]]


# --------------------------------------------------------------------------------------------
# The runner's parts: a background writer, claims with a heartbeat


class _Writer:
    """Commits answers to the cache on one background thread, in arrival order: every
    ``linger_s`` (and on ``flush``), all answers queued by then in one transaction.

    An async judge reports answers on its event loop; a commit there (a disk write per answer)
    would stall every request in flight, and so would waking a writer thread per answer (each
    wake-up takes the GIL from the loop). ``put`` only queues, so a killed run loses at most
    the answers of the last ``linger_s`` besides those in flight. ``flush`` waits for the queue
    to be written and raises the first write error, which also stops later ``put`` calls (no
    asking into a cache that no longer takes writes).
    """

    def __init__(
        self, cache: AnswerStore | None, judge: str, version: str, linger_s: float = 0.02
    ) -> None:
        self._cache, self._judge, self._version = cache, judge, version
        self._linger_s = linger_s
        self._queue: list[tuple[str, object, str]] = []
        self._condition = threading.Condition()
        self._queued = self._written = 0
        self._error: BaseException | None = None
        self._hurry = self._closed = False
        self._thread: threading.Thread | None = None
        if cache is not None:
            self._thread = threading.Thread(target=self._loop, name="hal-cache", daemon=True)
            self._thread.start()

    def put(self, key: str, answer: object, content_sha256: str) -> None:
        if self._thread is None:
            return
        with self._condition:
            if self._error is not None:
                raise self._error
            self._queue.append((key, answer, content_sha256))
            self._queued += 1

    def _loop(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._hurry or self._closed, self._linger_s)
                batch, self._queue, self._hurry = self._queue, [], False
                if not batch and self._closed:
                    return
            if not batch:
                continue
            try:
                self._cache.put_many(batch, judge=self._judge, version=self._version)
            except BaseException as error:  # handed to the asking thread by flush/put
                with self._condition:
                    self._error = self._error or error
                    self._condition.notify_all()
                return
            with self._condition:
                self._written += len(batch)
                self._condition.notify_all()

    def flush(self) -> None:
        """Wait until everything queued is committed; raise the first write error."""
        if self._thread is None:
            return
        with self._condition:
            self._hurry = True
            self._condition.notify_all()
            while self._written < self._queued and self._error is None:
                self._condition.wait()
            if self._error is not None:
                raise self._error

    def close(self) -> None:
        """Commit what is queued (unless writing failed) and stop the thread."""
        if self._thread is None:
            return
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        self._thread.join()


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _dead_on_this_host(owner: str) -> bool:
    """Whether a claim's owner was a process of this host that no longer exists."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


class _Claims:
    """This run's claims on items it will ask about, renewed by a heartbeat thread until the
    run ends (then released). Without a cache every item is this run's."""

    def __init__(self, cache: AnswerStore | None, lease_s: float) -> None:
        self._cache, self._lease_s = cache, lease_s
        self.owner = _owner()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _Claims:
        if self._cache is not None:
            for owner in self._cache.claim_owners():
                if owner != self.owner and _dead_on_this_host(owner):
                    self._cache.release(owner)  # a killed run: its items are free at once
            self._thread = threading.Thread(target=self._beat, name="hal-claims", daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self._lease_s / 3):
            try:
                self._cache.renew(self.owner, self._lease_s)
            except sqlite3.Error:  # a busy file: the next beat renews, the lease has margin
                continue

    def take(self, keys: Sequence[str]) -> set[str]:
        if self._cache is None or not keys:
            return set(keys)
        return self._cache.claim(keys, self.owner, self._lease_s)

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._cache.release(self.owner)


# --------------------------------------------------------------------------------------------
# The runner


class _Asking(Generic[Item, A]):
    """Asks the judge about keys and commits each answer once, as it arrives."""

    def __init__(
        self,
        question: Question[Item, A],
        items: dict[str, Item],
        hashes: dict[str, str],
        writer: _Writer,
        results: dict[str, A],
        stats: JudgeRunStats,
        on_answer: Callable[[], None],
    ) -> None:
        self.question, self.items, self.hashes = question, items, hashes
        self.writer, self.results, self.stats = writer, results, stats
        self.on_answer = on_answer
        self.fresh: dict[str, A] = {}

    def _commit(self, key: str, answer: A, store: bool = True) -> None:
        if key in self.fresh:
            raise JudgeError(
                f"the judge answered {self.question.noun} {self.question.answer_id(answer)} twice"
            )
        answer = self.question.accept(answer, self.items[key], key)
        if store:
            self.writer.put(key, answer, self.hashes[key])
        self.fresh[key] = self.results[key] = answer
        self.on_answer()

    def _matched(self, keys: Sequence[str], ids: Sequence[str], answers: Sequence[A]):
        """(key, answer) pairs of a chunk: by position when the judge answered every item,
        else by the id each answer carries."""
        if len(answers) == len(keys):
            return list(zip(keys, answers, strict=True))
        slots: dict[str, list[str]] = {}
        for key, item_id in zip(keys, ids, strict=True):
            slots.setdefault(item_id, []).append(key)
        pairs = []
        for answer in answers:
            answer_id = self.question.answer_id(answer)
            if not slots.get(answer_id):
                raise JudgeError(
                    f"the judge answered {self.question.noun} {answer_id}, which it was not "
                    f"asked about in this chunk ({len(answers)} answers for {len(keys)} "
                    f"{self.question.noun}s)"
                )
            pairs.append((slots[answer_id].pop(0), answer))
        return pairs

    def run(self, keys: Sequence[str], estimate: UsageEstimate | None, chunk_size: int) -> None:
        question = self.question
        refused = estimate.refused if estimate is not None else {}
        for position, key in enumerate(keys):
            if position in refused:  # our limit, not the judge's answer: decided again next run
                failed = question.failure(self.items[key], key, refused[position], "input")
                self._commit(key, failed, store=False)
        send = [key for position, key in enumerate(keys) if position not in refused]
        self.stats.requested += len(send)
        items = [self.items[key] for key in send]
        ids = [question.item_id(item, key) for item, key in zip(items, send, strict=True)]
        if send and question.ask_streaming is not None:
            question.ask_streaming(items, ids, lambda at, answer: self._commit(send[at], answer))
        else:
            for start in range(0, len(send), chunk_size):
                chunk = slice(start, start + chunk_size)
                answers = question.ask(items[chunk], ids[chunk])
                for key, answer in self._matched(send[chunk], ids[chunk], answers):
                    self._commit(key, answer)
                self.writer.flush()  # a killed run loses at most the chunk being asked
        for key in send:
            if key not in self.fresh:  # never silently dropped: recorded, asked next run
                reason = f"the judge gave no answer for this {question.noun}"
                self._commit(key, question.failure(self.items[key], key, reason, NO_ANSWER_KIND))


def ask_cached(
    question: Question[Item, A],
    items: Sequence[Item],
    stats: JudgeRunStats,
    *,
    fingerprint: str,
    version: str,
    cache: AnswerStore | None = None,
    retry_failures: RetryPolicy = "transient",
    chunk_size: int = 64,
    on_progress: Callable[[int, int], None] | None = None,
    on_plan: Callable[[RunPlan], None] | None = None,
    lease_s: float = CLAIM_LEASE_S,
) -> tuple[list[str], dict[str, A]]:
    """Ask the judge about every item through ``cache``: (cache key per item, answer per key).

    Items with the same content are asked once. ``retry_failures`` decides which stored
    failures are asked again. Items another live run has claimed are waited for and read
    back, not asked. ``on_plan`` hears what will be asked (and its estimated cost) before the
    first request; ``on_progress(done, total)`` counts distinct items. ``stats`` is filled in.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    started = time.time()
    keys: list[str] = []
    first: dict[str, Item] = {}
    hashes: dict[str, str] = {}
    for item in items:
        digest = question.content_sha256(item)
        key = answer_key(fingerprint, version, digest)
        first.setdefault(key, item)
        hashes[key] = digest
        keys.append(key)
    stats.items, stats.unique = len(keys), len(first)

    results: dict[str, A] = {}
    stored = cache.get_many(first) if cache is not None else {}
    for key, answer in stored.items():
        if not should_retry(answer, retry_failures):
            results[key] = answer
    stats.cache_hits = len(results)
    todo = [key for key in first if key not in results]

    def advance() -> None:
        if on_progress:
            on_progress(len(results), stats.unique)

    def settle(keys: Sequence[str]) -> list[str]:
        """Take what other runs answered meanwhile; the keys still open."""
        done = cache.settled_since(keys, started) if cache is not None and keys else {}
        results.update(done)
        stats.cache_hits += len(done)
        return [key for key in keys if key not in done]

    advance()

    def estimate(keys: Sequence[str]) -> UsageEstimate | None:
        if question.estimate is None or not keys:
            return None
        return question.estimate([first[key] for key in keys])

    with _Claims(cache, lease_s) as claims:
        writer = _Writer(cache, fingerprint, version)
        asking = _Asking(question, first, hashes, writer, results, stats, advance)
        try:
            mine = claims.take(todo)
            waiting = [key for key in todo if key not in mine]
            ask = settle([key for key in todo if key in mine])
            stats.claimed_elsewhere = len(waiting)
            planned = estimate(ask)
            if on_plan:
                counts = (stats.items, stats.unique, stats.cache_hits, len(ask), len(waiting))
                on_plan(RunPlan(question.noun, *counts, planned))
            asking.run(ask, planned, chunk_size)
            while waiting:  # another run is asking these: read its answers, or take over
                waiting = settle(waiting)
                advance()
                taken = claims.take(waiting)
                if taken:
                    now_mine = settle([key for key in waiting if key in taken])
                    asking.run(now_mine, estimate(now_mine), chunk_size)
                    waiting = [key for key in waiting if key not in taken]
                elif waiting:
                    time.sleep(min(1.0, lease_s / 4))
            writer.flush()
        finally:
            writer.close()  # what was answered is committed before the claims are released
    fresh = asking.fresh

    if cache is not None:  # another run may have stored an answer meanwhile: the cache kept it
        lost = [key for key, answer in fresh.items() if not answer.ok]
        results.update({k: a for k, a in cache.get_many(lost).items() if a.ok} if lost else {})
    for key in keys:
        answer = results[key]
        if answer.ok:
            stats.answered += 1
        else:
            stats.count_failure(failure_kind(answer))
    for answer in fresh.values():
        stats.add_usage(answer)
    return keys, results


# --------------------------------------------------------------------------------------------
# Rating dialogues


def rated_text_sha256(text: str, tags: SpeakerTags) -> str:
    """Hash of what is rated: the dialogue (whitespace-normalized) and who in it is rated."""
    header = canonical_json({"rated": tags.rated, "others": tags.others})
    return hashlib.sha256(f"{header}\n{normalize_text(text)}".encode()).hexdigest()


@dataclass
class RatingStats(JudgeRunStats):
    """What a rating run did, for metrics."""

    @property
    def rated(self) -> int:
        return self.answered


@dataclass
class RatingRun(JudgeRun[RatingResult]):
    """Per input row: the cache key and the final result."""

    @property
    def questionnaire_version(self) -> str:
        return self.version

    def result_for_row(self, row: int) -> RatingResult:
        return self.answer_for_row(row)


def rating_question(
    judge: Judge, questionnaire: Questionnaire, tags: SpeakerTags
) -> Question[str, RatingResult]:
    """Rating a dialogue's rated speaker on every trait, as a question for :func:`ask_cached`."""
    streaming = None
    if isinstance(judge, StreamingJudge):

        def streaming(texts, ids, on_answer) -> None:
            judge.rate_streaming(texts, questionnaire, tags, ids, on_answer)

    estimate = getattr(judge, "estimate_ratings", None)
    return Question(
        noun="dialogue",
        content_sha256=lambda text: rated_text_sha256(text, tags),
        item_id=lambda text, key: key,
        answer_id=lambda result: result.item_id,
        ask=lambda texts, ids: judge.rate(texts, questionnaire, tags, ids),
        accept=lambda result, text, key: result.model_copy(
            update={"item_id": key, "cached": False}
        ),
        failure=lambda text, key, reason, kind: RatingResult(
            item_id=key, error=reason, error_kind=kind
        ),
        ask_streaming=streaming,
        estimate=(lambda texts: estimate(texts, questionnaire, tags)) if estimate else None,
    )


def rate_cached(
    judge: Judge,
    dialogues: Sequence[str],
    questionnaire: Questionnaire,
    tags: SpeakerTags,
    cache: RatingCache | None = None,
    *,
    retry_failures: RetryPolicy = "transient",
    chunk_size: int = 64,
    on_progress: Callable[[int, int], None] | None = None,
    on_plan: Callable[[RunPlan], None] | None = None,
) -> RatingRun:
    """Rate every dialogue, serving finished ones from ``cache`` and committing new ones to it
    (:func:`ask_cached`). A dialogue the judge cannot rate (no line of the rated speaker)
    comes back as a failure of kind ``input`` from the judge, without a request.
    """
    fingerprint = judge.fingerprint()
    stats = RatingStats()
    keys, results = ask_cached(
        rating_question(judge, questionnaire, tags),
        dialogues,
        stats,
        fingerprint=fingerprint,
        version=questionnaire.version,
        cache=cache,
        retry_failures=retry_failures,
        chunk_size=chunk_size,
        on_progress=on_progress,
        on_plan=on_plan,
    )
    return RatingRun(keys, results, stats, fingerprint, questionnaire.version)


def ratings_table(
    run: RatingRun, questionnaire: Questionnaire, item_ids: Sequence[str] | None = None
) -> pd.DataFrame:
    """One row per input: ``item_id``, one column per trait id, ``status``, ``error_kind``,
    ``error``; ``ev.<trait id>`` columns when the judge gave expected values, and
    ``domain_distance`` / ``out_of_domain`` when it measured how far each input lies from its
    training data."""
    ids = list(item_ids) if item_ids is not None else [str(i + 1) for i in range(len(run.keys))]
    trait_ids = questionnaire.trait_ids
    rows = []
    has_expected = has_domain = False
    for item_id, key in zip(ids, run.keys, strict=True):
        result = run.results[key]
        row: dict[str, object] = {ID_COLUMN: item_id}
        for trait_id in trait_ids:
            row[trait_id] = result.ratings.get(trait_id) if result.ok else None
        if result.expected:
            has_expected = True
            for trait_id in trait_ids:
                row[f"ev.{trait_id}"] = result.expected.get(trait_id)
        if result.domain_distance is not None:
            has_domain = True
        row[DOMAIN_DISTANCE_COLUMN] = result.domain_distance
        row[OUT_OF_DOMAIN_COLUMN] = result.out_of_domain
        row[STATUS_COLUMN] = RATED_STATUS if result.ok else FAILED_STATUS
        row[KIND_COLUMN] = result.error_kind
        row[ERROR_COLUMN] = result.error
        rows.append(row)
    columns = [ID_COLUMN, *trait_ids]
    if has_expected:
        columns += [f"ev.{trait_id}" for trait_id in trait_ids]
    if has_domain:
        columns += [DOMAIN_DISTANCE_COLUMN, OUT_OF_DOMAIN_COLUMN]
    columns += [STATUS_COLUMN, KIND_COLUMN, ERROR_COLUMN]
    table = pd.DataFrame(rows, columns=columns)
    for trait_id in trait_ids:
        values = pd.to_numeric(table[trait_id], errors="coerce")
        present = values.dropna()
        integral = bool((present == present.round()).all())
        table[trait_id] = values.astype("Int64") if integral else values.astype(float)
    return table
