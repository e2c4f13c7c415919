"""A content-addressed SQLite cache of judge ratings, written as results arrive.

An entry is keyed by the judge's fingerprint, the questionnaire's version and the sha256 of
the rated text, so a changed prompt, model, questionnaire or dialogue is a different entry and
nothing stale is ever served. Each result is committed on its own (WAL journal), so a run
killed at any moment loses at most the answers still in flight; a rerun finds everything
finished and asks only for the rest. Failures are stored too, with their reason and kind, so
they are reported (and retried only when the caller's policy says so). A rating, once stored,
is never replaced by a failure.

The same file holds a judge's statement proposals per Turing game (:class:`ProposalCache`),
under the same rules; both tables share one connection setup (:class:`SQLiteStore`).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Self

from hal_core.judging import RatingResult, StatementProposal

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rating (
    key TEXT PRIMARY KEY,
    judge TEXT NOT NULL,
    questionnaire TEXT NOT NULL,
    text_sha256 TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('rated', 'failed')),
    ratings TEXT,
    expected TEXT,
    error TEXT,
    error_kind TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    latency_s REAL,
    requests INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
)
"""

_UPSERT = """
INSERT INTO rating (key, judge, questionnaire, text_sha256, status, ratings, expected, error,
                    error_kind, prompt_tokens, completion_tokens, latency_s, requests,
                    created_at, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET
    status = excluded.status, ratings = excluded.ratings, expected = excluded.expected,
    error = excluded.error, error_kind = excluded.error_kind,
    prompt_tokens = rating.prompt_tokens + excluded.prompt_tokens,
    completion_tokens = rating.completion_tokens + excluded.completion_tokens,
    latency_s = excluded.latency_s, requests = rating.requests + excluded.requests,
    updated_at = excluded.updated_at
WHERE rating.status != 'rated'
"""


def rating_key(judge_fingerprint: str, questionnaire_version: str, text_sha256: str) -> str:
    """The cache key of one rating: what judged, on which questionnaire, which text."""
    blob = f"{judge_fingerprint}\n{questionnaire_version}\n{text_sha256}".encode()
    return hashlib.sha256(blob).hexdigest()


class SQLiteStore:
    """One table of the cache file: a WAL-journalled connection, safe across threads."""

    TABLE: str = ""
    SCHEMA: str = ""
    """``CREATE TABLE IF NOT EXISTS`` of the table, with ``key`` and ``status`` columns."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(
            self.path, timeout=60, isolation_level=None, check_same_thread=False
        )
        self._connection.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed result survives the process being killed (not a
        # power cut), at a fraction of FULL's fsync cost per result.
        self._connection.execute("PRAGMA synchronous=NORMAL")
        self._connection.execute(self.SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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


class RatingCache(SQLiteStore):
    """Ratings and recorded failures by key, in one SQLite file; safe across threads."""

    TABLE = "rating"
    SCHEMA = _SCHEMA

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
        now = time.time()
        row = (
            key,
            judge,
            questionnaire,
            text_sha256,
            "rated" if result.ok else "failed",
            json.dumps(result.ratings, sort_keys=True) if result.ok else None,
            json.dumps(result.expected, sort_keys=True) if result.expected else None,
            result.error,
            result.error_kind,
            result.prompt_tokens,
            result.completion_tokens,
            result.latency_s,
            result.requests,
            now,
            now,
        )
        with self._lock:
            self._connection.execute(_UPSERT, row)

    def get_many(self, keys: Iterable[str]) -> dict[str, RatingResult]:
        """Stored results (marked ``cached``) for the keys that have one."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, RatingResult] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._connection.execute(
                    "SELECT key, status, ratings, expected, error, error_kind, prompt_tokens, "
                    f"completion_tokens, latency_s, requests FROM rating WHERE key IN ({marks})",
                    chunk,
                ).fetchall()
                for key, status, ratings, expected, error, kind, pt, ct, latency, n in rows:
                    found[key] = RatingResult(
                        item_id=key,
                        ratings=json.loads(ratings) if status == "rated" else None,
                        expected=json.loads(expected) if expected else None,
                        error=None if status == "rated" else (error or "failed"),
                        error_kind=None if status == "rated" else kind,
                        prompt_tokens=pt,
                        completion_tokens=ct,
                        latency_s=latency,
                        requests=n,
                        cached=True,
                    )
        return found


_PROPOSAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS proposal (
    key TEXT PRIMARY KEY,
    judge TEXT NOT NULL,
    prompt TEXT NOT NULL,
    game_sha256 TEXT NOT NULL,
    game_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('proposed', 'failed')),
    verdict TEXT,
    statements TEXT,
    error TEXT,
    error_kind TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    latency_s REAL,
    requests INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
)
"""

_PROPOSAL_UPSERT = """
INSERT INTO proposal (key, judge, prompt, game_sha256, game_id, status, verdict, statements,
                      error, error_kind, prompt_tokens, completion_tokens, latency_s, requests,
                      created_at, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET
    game_id = excluded.game_id, status = excluded.status, verdict = excluded.verdict,
    statements = excluded.statements, error = excluded.error, error_kind = excluded.error_kind,
    prompt_tokens = proposal.prompt_tokens + excluded.prompt_tokens,
    completion_tokens = proposal.completion_tokens + excluded.completion_tokens,
    latency_s = excluded.latency_s, requests = proposal.requests + excluded.requests,
    updated_at = excluded.updated_at
WHERE proposal.status != 'proposed'
"""

_PROPOSAL_READ = (
    "key",
    "game_id",
    "status",
    "verdict",
    "statements",
    "error",
    "error_kind",
    "prompt_tokens",
    "completion_tokens",
    "latency_s",
    "requests",
)


def proposal_key(judge_fingerprint: str, prompt_version: str, game_sha256: str) -> str:
    """The cache key of one game's statements: what judged, with which prompt, which game."""
    blob = f"{judge_fingerprint}\n{prompt_version}\n{game_sha256}".encode()
    return hashlib.sha256(blob).hexdigest()


class ProposalCache(SQLiteStore):
    """Statement proposals and recorded failures by key, in the rating cache's file."""

    TABLE = "proposal"
    SCHEMA = _PROPOSAL_SCHEMA

    def put_many(
        self,
        entries: Sequence[tuple[str, StatementProposal, str]],
        *,
        judge: str,
        prompt: str,
    ) -> None:
        """Commit ``(key, proposal, game_sha256)`` entries in one transaction; a stored
        proposal is never overwritten by a failure."""
        now = time.time()
        rows = [
            (
                key,
                judge,
                prompt,
                game_sha256,
                proposal.game_id,
                "proposed" if proposal.ok else "failed",
                proposal.verdict if proposal.ok else None,
                json.dumps(proposal.statements, ensure_ascii=False) if proposal.ok else None,
                proposal.error,
                proposal.error_kind,
                proposal.prompt_tokens,
                proposal.completion_tokens,
                proposal.latency_s,
                proposal.requests,
                now,
                now,
            )
            for key, proposal, game_sha256 in entries
        ]
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                self._connection.executemany(_PROPOSAL_UPSERT, rows)
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    def get_many(self, keys: Iterable[str]) -> dict[str, StatementProposal]:
        """Stored proposals and failures for the keys that have one (``game_id``: the game
        whose answer was stored)."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, StatementProposal] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._connection.execute(
                    f"SELECT {', '.join(_PROPOSAL_READ)} FROM proposal WHERE key IN ({marks})",
                    chunk,
                ).fetchall()
                for values in rows:
                    row = dict(zip(_PROPOSAL_READ, values, strict=True))
                    ok = row["status"] == "proposed"
                    found[row["key"]] = StatementProposal(
                        game_id=row["game_id"],
                        verdict=row["verdict"] if ok else None,
                        statements=json.loads(row["statements"]) if ok else [],
                        error=None if ok else (row["error"] or "failed"),
                        error_kind=None if ok else row["error_kind"],
                        prompt_tokens=row["prompt_tokens"],
                        completion_tokens=row["completion_tokens"],
                        latency_s=row["latency_s"],
                        requests=row["requests"],
                    )
        return found
