"""A content-addressed SQLite cache of judge answers, written as answers arrive.

An entry is keyed by the judge's fingerprint, the version of what was asked (questionnaire or
statement prompt) and the sha256 of what the judge read, so a changed prompt, model,
questionnaire or text is a different entry and nothing stale is ever served. Answers are
committed as they arrive (WAL journal), so a run killed at any moment loses at most the
answers still in flight; a rerun finds everything finished and asks only for the rest.
Failures are stored too, with their reason and kind, so they are reported (and retried only
when the caller's policy says so). An answer, once stored, is never replaced by a failure.

One file holds ratings (:class:`RatingCache`) and statement proposals per Turing game
(:class:`ProposalCache`): both are an :class:`AnswerStore`, which owns the table layout, the
upsert, the reads and the claims that keep two runs on one file from paying for the same item
twice. Fields an answer model gains later (optional ones) round-trip through an ``extra`` JSON
column, so the schema does not change with them.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar

from pydantic import BaseModel

from hal_core.judging import RatingResult, StatementProposal

A = TypeVar("A", RatingResult, StatementProposal)

_ACCOUNTING = ("error", "error_kind", "prompt_tokens", "completion_tokens", "latency_s", "requests")
"""Columns every answer table has besides its own: the failure and what the answer cost."""

_CLAIM_SCHEMA = """
CREATE TABLE IF NOT EXISTS claim (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL
)
"""


def answer_key(judge_fingerprint: str, version: str, content_sha256: str) -> str:
    """The cache key of one answer: what judged, asked what (questionnaire or prompt version),
    about which content."""
    blob = f"{judge_fingerprint}\n{version}\n{content_sha256}".encode()
    return hashlib.sha256(blob).hexdigest()


rating_key = answer_key
"""The key of one rating: judge fingerprint, questionnaire version, rated text's sha256."""
proposal_key = answer_key
"""The key of one game's statements: judge fingerprint, prompt version, game's sha256."""


def _chunks(keys: Sequence[str], size: int = 500) -> Iterable[Sequence[str]]:
    for start in range(0, len(keys), size):
        yield keys[start : start + size]


class SQLiteFile:
    """A SQLite file behind one WAL-journalled connection, safe across threads."""

    def __init__(self, path: str | Path, *schema: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(
            self.path, timeout=60, isolation_level=None, check_same_thread=False
        )
        self._connection.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed row survives the process being killed (not a
        # power cut), at a fraction of FULL's fsync cost per commit.
        self._connection.execute("PRAGMA synchronous=NORMAL")
        for statement in schema:
            self._connection.execute(statement)

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AnswerStore(SQLiteFile, Generic[A]):
    """One table of answers in the cache file: a WAL-journalled connection, safe across
    threads; subclasses name the table and map their answer's own fields to columns."""

    TABLE: ClassVar[str] = ""
    ANSWER: ClassVar[type[BaseModel]]
    OK_STATUS: ClassVar[str] = ""
    SCOPE: ClassVar[tuple[str, str, str]] = ("judge", "version", "content_sha256")
    """Column names of the judge fingerprint, the version asked and the content hash."""
    OWN: ClassVar[tuple[str, ...]] = ()
    """The answer's own columns (``_own_values`` fills them, ``_own_fields`` reads them)."""
    STORED_ELSEWHERE: ClassVar[frozenset[str]] = frozenset()
    """Answer fields that are neither columns nor extra (ids the caller sets, flags)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, self._schema(), _CLAIM_SCHEMA)
        self._add_extra_column()
        self._upsert = self._upsert_sql()
        self._read = ("key", "status", *self.OWN, *_ACCOUNTING, "extra")
        self._extras = set(self._extra_fields())

    # -- layout ------------------------------------------------------------------------------

    @classmethod
    def _schema(cls) -> str:
        judge, version, content = cls.SCOPE
        own = "".join(f"    {column} TEXT,\n" for column in cls.OWN)
        return f"""
CREATE TABLE IF NOT EXISTS {cls.TABLE} (
    key TEXT PRIMARY KEY,
    {judge} TEXT NOT NULL,
    {version} TEXT NOT NULL,
    {content} TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('{cls.OK_STATUS}', 'failed')),
{own}    error TEXT,
    error_kind TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    latency_s REAL,
    requests INTEGER NOT NULL DEFAULT 0,
    extra TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
)
"""

    def _add_extra_column(self) -> None:
        """Caches written before the ``extra`` column existed get it (another process may be
        adding it at the same moment)."""
        columns = {row[1] for row in self._connection.execute(f"PRAGMA table_info({self.TABLE})")}
        if "extra" in columns:
            return
        try:
            self._connection.execute(f"ALTER TABLE {self.TABLE} ADD COLUMN extra TEXT")
        except sqlite3.OperationalError as error:
            if "duplicate column" not in str(error):
                raise

    @classmethod
    def _upsert_sql(cls) -> str:
        columns = ("key", *cls.SCOPE, "status", *cls.OWN, *_ACCOUNTING, "extra")
        replaced = ("status", *cls.OWN, "error", "error_kind", "latency_s", "extra")
        added = ("prompt_tokens", "completion_tokens", "requests")
        updates = [f"{c} = excluded.{c}" for c in replaced]
        updates += [f"{c} = {cls.TABLE}.{c} + excluded.{c}" for c in added]
        return (
            f"INSERT INTO {cls.TABLE} ({', '.join(columns)}, created_at, updated_at) "
            f"VALUES ({', '.join('?' * (len(columns) + 2))}) "
            f"ON CONFLICT (key) DO UPDATE SET {', '.join(updates)}, "
            "updated_at = excluded.updated_at "
            f"WHERE {cls.TABLE}.status != '{cls.OK_STATUS}'"
        )

    # -- what subclasses say about their answers ---------------------------------------------

    def _own_values(self, answer: A) -> tuple[Any, ...]:
        """Values of the ``OWN`` columns for an answer."""
        raise NotImplementedError

    def _own_fields(self, row: dict[str, Any], ok: bool) -> dict[str, Any]:
        """Answer fields from a row's ``OWN`` columns."""
        raise NotImplementedError

    def _extra_fields(self) -> list[str]:
        """Answer fields kept in the ``extra`` JSON column: any not otherwise stored."""
        known = {*_ACCOUNTING, *self.OWN, *self.STORED_ELSEWHERE}
        return [name for name in self.ANSWER.model_fields if name not in known]

    # -- answers -----------------------------------------------------------------------------

    def _row(self, key: str, answer: A, judge: str, version: str, content_sha256: str, now: float):
        extra = answer.model_dump(mode="json", include=self._extras) if self._extras else {}
        extra = {name: value for name, value in extra.items() if value is not None}
        extra_json = json.dumps(extra, sort_keys=True) if extra else None
        return (
            key,
            judge,
            version,
            content_sha256,
            self.OK_STATUS if answer.ok else "failed",
            *self._own_values(answer),
            answer.error,
            answer.error_kind,
            answer.prompt_tokens,
            answer.completion_tokens,
            answer.latency_s,
            answer.requests,
            extra_json,
            now,
            now,
        )

    def put_many(self, entries: Sequence[tuple[str, A, str]], *, judge: str, version: str) -> None:
        """Commit ``(key, answer, content_sha256)`` entries in one transaction; a stored
        answer is never overwritten by a failure."""
        now = time.time()
        rows = [self._row(key, a, judge, version, sha, now) for key, a, sha in entries]
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                self._connection.executemany(self._upsert, rows)
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    def _answer(self, values: Sequence[Any]) -> tuple[str, A]:
        row = dict(zip(self._read, values, strict=True))
        ok = row["status"] == self.OK_STATUS
        extra = json.loads(row["extra"]) if row["extra"] else {}
        fields = {name: value for name, value in extra.items() if name in self.ANSWER.model_fields}
        fields.update(self._own_fields(row, ok))
        fields.update(
            error=None if ok else (row["error"] or "failed"),
            error_kind=None if ok else row["error_kind"],
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
            latency_s=row["latency_s"],
            requests=row["requests"],
        )
        return row["key"], self.ANSWER(**fields)

    def _select(self, keys: Iterable[str], condition: str = "", *args: Any) -> dict[str, A]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, A] = {}
        with self._lock:
            for chunk in _chunks(keys):
                marks = ",".join("?" * len(chunk))
                rows = self._connection.execute(
                    f"SELECT {', '.join(self._read)} FROM {self.TABLE} "
                    f"WHERE key IN ({marks}){condition}",
                    (*chunk, *args),
                ).fetchall()
                found.update(self._answer(values) for values in rows)
        return found

    def get_many(self, keys: Iterable[str]) -> dict[str, A]:
        """Stored answers and failures for the keys that have one."""
        return self._select(keys)

    def settled_since(self, keys: Iterable[str], since: float) -> dict[str, A]:
        """Answers stored for ``keys`` that need no asking by a run that started at ``since``:
        any good answer, and failures written after ``since`` (by another run)."""
        return self._select(keys, f" AND (status = '{self.OK_STATUS}' OR updated_at >= ?)", since)

    def counts(self) -> dict[str, int]:
        """Number of entries by status."""
        with self._lock:
            rows = self._connection.execute(
                f"SELECT status, COUNT(*) FROM {self.TABLE} GROUP BY status"
            ).fetchall()
        return {status: count for status, count in rows}

    def keys(self, status: str | None = None) -> set[str]:
        query = f"SELECT key FROM {self.TABLE}" + (" WHERE status = ?" if status else "")
        with self._lock:
            rows = self._connection.execute(query, (status,) if status else ()).fetchall()
        return {key for (key,) in rows}

    # -- claims: who is asking about what right now -----------------------------------------

    def claim(self, keys: Sequence[str], owner: str, lease_s: float) -> set[str]:
        """Claim ``keys`` for ``owner`` until ``lease_s`` from now; returns the keys it holds.

        A key held by another owner whose lease has not expired stays theirs; an expired
        claim (its run died) is taken over.
        """
        now = time.time()
        held: set[str] = set()
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                self._connection.executemany(
                    "INSERT INTO claim (key, owner, expires_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, "
                    "expires_at = excluded.expires_at "
                    "WHERE claim.expires_at < ? OR claim.owner = excluded.owner",
                    [(key, owner, now + lease_s, now) for key in keys],
                )
                for chunk in _chunks(list(keys)):
                    marks = ",".join("?" * len(chunk))
                    held.update(
                        key
                        for (key,) in self._connection.execute(
                            f"SELECT key FROM claim WHERE owner = ? AND key IN ({marks})",
                            (owner, *chunk),
                        )
                    )
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")
        return held

    def renew(self, owner: str, lease_s: float) -> None:
        """Extend every claim of ``owner`` to ``lease_s`` from now (a live run's heartbeat)."""
        with self._lock:
            self._connection.execute(
                "UPDATE claim SET expires_at = ? WHERE owner = ?", (time.time() + lease_s, owner)
            )

    def claim_owners(self) -> set[str]:
        """Owners of claims in the file (live runs, or dead ones whose leases still run)."""
        with self._lock:
            rows = self._connection.execute("SELECT DISTINCT owner FROM claim").fetchall()
        return {owner for (owner,) in rows}

    def release(self, owner: str) -> None:
        """Drop every claim of ``owner`` (its run is over)."""
        with self._lock:
            self._connection.execute("DELETE FROM claim WHERE owner = ?", (owner,))


class RatingCache(AnswerStore[RatingResult]):
    """Ratings and recorded failures by key, in one SQLite file; safe across threads."""

    TABLE = "rating"
    ANSWER = RatingResult
    OK_STATUS = "rated"
    SCOPE = ("judge", "questionnaire", "text_sha256")
    OWN = ("ratings", "expected")
    STORED_ELSEWHERE = frozenset({"item_id", "cached"})

    def _own_values(self, answer: RatingResult) -> tuple[Any, ...]:
        return (
            json.dumps(answer.ratings, sort_keys=True) if answer.ok else None,
            json.dumps(answer.expected, sort_keys=True) if answer.expected else None,
        )

    def _own_fields(self, row: dict[str, Any], ok: bool) -> dict[str, Any]:
        return {
            "item_id": row["key"],
            "ratings": json.loads(row["ratings"]) if ok else None,
            "expected": json.loads(row["expected"]) if row["expected"] else None,
            "cached": True,
        }

    def put(
        self,
        key: str,
        result: RatingResult,
        *,
        judge: str,
        questionnaire: str,
        text_sha256: str,
    ) -> None:
        """Commit one result now; a stored rating is never overwritten by a failure."""
        self.put_many([(key, result, text_sha256)], judge=judge, version=questionnaire)


class ProposalCache(AnswerStore[StatementProposal]):
    """Statement proposals and recorded failures by key, in the rating cache's file."""

    TABLE = "proposal"
    ANSWER = StatementProposal
    OK_STATUS = "proposed"
    SCOPE = ("judge", "prompt", "game_sha256")
    OWN = ("game_id", "verdict", "statements")

    def _own_values(self, proposal: StatementProposal) -> tuple[Any, ...]:
        return (
            proposal.game_id,
            proposal.verdict if proposal.ok else None,
            json.dumps(proposal.statements, ensure_ascii=False) if proposal.ok else None,
        )

    def _own_fields(self, row: dict[str, Any], ok: bool) -> dict[str, Any]:
        """``game_id``: the game whose answer was stored."""
        return {
            "game_id": row["game_id"],
            "verdict": row["verdict"] if ok else None,
            "statements": json.loads(row["statements"]) if ok else [],
        }
