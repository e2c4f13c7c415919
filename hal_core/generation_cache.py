"""A SQLite cache of generated dialogues, committed one dialogue at a time.

An entry is keyed by everything that decides a dialogue (:func:`generation_key`): the policy's
fingerprint (model files, plus adapter files), the protocol, the doctor script's version, the
persona's prompt (its text hash, so an edited prompt or card is a new entry), the seed, the
sample index and the sampling settings. Each dialogue is committed as it finishes (WAL
journal, like :mod:`hal_core.rating_cache`), so a killed run loses only the batch in flight and
a rerun generates only what is missing. A stored dialogue is never replaced: writing a key
again only counts the write in ``writes``, which is how a test proves nothing was generated
twice. Degeneracy is not stored: it is judged from the stored turns when a table is built, so
changed rules need no regeneration.

The same file memoises file hashes by path, size and modification time (:meth:`file_digest`),
so a policy's multi-GB weights are hashed once.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hal_core.rating_cache import SQLiteFile
from hal_core.tables import file_sha256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS generation (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('generated')),
    policy TEXT NOT NULL,
    protocol TEXT NOT NULL,
    doctor_script TEXT NOT NULL,
    persona_id TEXT NOT NULL,
    seed INTEGER NOT NULL,
    sample_index INTEGER NOT NULL,
    settings TEXT NOT NULL,
    dialogue TEXT NOT NULL,
    patient_turns TEXT NOT NULL,
    issues TEXT NOT NULL,
    raw TEXT NOT NULL,
    new_tokens INTEGER NOT NULL,
    seconds REAL NOT NULL,
    run TEXT NOT NULL,
    writes INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
)
"""

_FILE_SCHEMA = """
CREATE TABLE IF NOT EXISTS file_digest (
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (path, size, mtime_ns)
)
"""

_INSERT = """
INSERT INTO generation (key, status, policy, protocol, doctor_script, persona_id, seed,
                        sample_index, settings, dialogue, patient_turns, issues, raw, new_tokens,
                        seconds, run, writes, created_at, updated_at)
VALUES (?, 'generated', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)
ON CONFLICT (key) DO UPDATE SET writes = generation.writes + 1, updated_at = excluded.updated_at
"""

_READ = (
    "key",
    "dialogue",
    "patient_turns",
    "issues",
    "raw",
    "new_tokens",
    "seconds",
    "run",
    "writes",
)


class GeneratedDialogue(BaseModel):
    """One finished dialogue as the cache holds it."""

    model_config = ConfigDict(frozen=True)

    dialogue: str = Field(description="Lines 'D: ...' / 'P: ...'.")
    patient_turns: tuple[str, ...] = Field(description="The patient's turns, cleaned, in order.")
    issues: tuple[str, ...] = Field(
        default=(), description="What went wrong while generating (e.g. wrong_speaker_tags)."
    )
    raw: tuple[str, ...] = Field(default=(), description="The model's replies before cleaning.")
    new_tokens: int = Field(default=0, description="Tokens the policy generated.")
    seconds: float = Field(default=0.0, description="Share of its batch's wall time.")
    run: str = Field(default="", description="Which run generated it.")
    writes: int = Field(default=1, description="Times the key was written (1 unless rerun).")
    cached: bool = Field(default=False, description="Served from the cache in this run.")


def generation_key(**parts: Any) -> str:
    """The cache key: sha256 of the parts (policy, protocol, script, persona text, seed, ...)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


class GenerationCache(SQLiteFile):
    """Generated dialogues by key, plus a memo of file hashes, in one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, _SCHEMA, _FILE_SCHEMA)

    def put(self, key: str, item: GeneratedDialogue, **meta: Any) -> None:
        """Commit one dialogue now; an existing key keeps its dialogue (``writes`` counts)."""
        now = time.time()
        row = (
            key,
            meta["policy"],
            meta["protocol"],
            meta.get("doctor_script") or "",
            str(meta["persona_id"]),
            int(meta["seed"]),
            int(meta["sample_index"]),
            json.dumps(meta["settings"], sort_keys=True),
            item.dialogue,
            json.dumps(list(item.patient_turns), ensure_ascii=False),
            json.dumps(list(item.issues)),
            json.dumps(list(item.raw), ensure_ascii=False),
            item.new_tokens,
            item.seconds,
            item.run,
            now,
            now,
        )
        with self._lock:
            self._connection.execute(_INSERT, row)

    def get_many(self, keys: Iterable[str]) -> dict[str, GeneratedDialogue]:
        """Stored dialogues (marked ``cached``) for the keys that have one."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, GeneratedDialogue] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._connection.execute(
                    f"SELECT {', '.join(_READ)} FROM generation WHERE key IN ({marks})", chunk
                ).fetchall()
                for values in rows:
                    row = dict(zip(_READ, values, strict=True))
                    found[row["key"]] = GeneratedDialogue(
                        dialogue=row["dialogue"],
                        patient_turns=tuple(json.loads(row["patient_turns"])),
                        issues=tuple(json.loads(row["issues"])),
                        raw=tuple(json.loads(row["raw"])),
                        new_tokens=row["new_tokens"],
                        seconds=row["seconds"],
                        run=row["run"],
                        writes=row["writes"],
                        cached=True,
                    )
        return found

    def file_digest(self, path: str | Path) -> str:
        """sha256 of a file, computed once per (path, size, modification time)."""
        path = Path(path).resolve()
        stat = os.stat(path)
        lookup = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            row = self._connection.execute(
                "SELECT sha256 FROM file_digest WHERE path = ? AND size = ? AND mtime_ns = ?",
                lookup,
            ).fetchone()
        if row is not None:
            return row[0]
        digest = file_sha256(path)
        with self._lock:
            self._connection.execute(
                "INSERT OR REPLACE INTO file_digest (path, size, mtime_ns, sha256) "
                "VALUES (?, ?, ?, ?)",
                (*lookup, digest),
            )
        return digest
