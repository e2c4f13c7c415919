"""Rate a list of dialogues through a judge and a cache: each distinct text is asked once,
every finished result is committed before the next one is awaited, and every input ends
rated or failed with a reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from hal_core.dialogue import SpeakerTags
from hal_core.judges.prompting import canonical_json, normalize_text
from hal_core.judging import Judge, JudgeError, JudgeRunStats, RatingResult, StreamingJudge
from hal_core.questionnaire import Questionnaire
from hal_core.rating_cache import RatingCache, rating_key

RetryPolicy = Literal["none", "transient", "all"]
STATUS_COLUMN, ERROR_COLUMN, KIND_COLUMN, ID_COLUMN = "status", "error", "error_kind", "item_id"


def rated_text_sha256(text: str, tags: SpeakerTags) -> str:
    """Hash of what is rated: the dialogue (whitespace-normalized) and who in it is rated."""
    header = canonical_json({"rated": tags.rated, "others": tags.others})
    return hashlib.sha256(f"{header}\n{normalize_text(text)}".encode()).hexdigest()


@dataclass
class RatingStats(JudgeRunStats):
    """What a rating run did, for metrics."""

    items: int = 0
    rated: int = 0


@dataclass
class RatingRun:
    """Per input row: the cache key and the final result."""

    keys: list[str]
    results: dict[str, RatingResult]
    stats: RatingStats
    fingerprint: str
    questionnaire_version: str

    def result_for_row(self, row: int) -> RatingResult:
        return self.results[self.keys[row]]


def _should_retry(result: RatingResult, policy: RetryPolicy) -> bool:
    if result.ok or policy == "none":
        return False
    return policy == "all" or result.error_kind == "transient"


@contextmanager
def _background_writes(cache: RatingCache | None) -> Iterator[Callable[..., None]]:
    """``put`` for ``cache`` that commits on one writer thread, in arrival order.

    An async judge calls back on its event loop; a commit there (a write per result) would
    stall every request in flight. Leaving the block waits for every queued commit and
    raises the first write error.
    """
    if cache is None:
        yield lambda *args, **kwargs: None
        return
    writes: list[Future] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hal-cache") as writer:

        def put(*args, **kwargs) -> None:
            failed = next((w for w in writes if w.done() and w.exception() is not None), None)
            if failed is not None:  # stop rating into a cache that no longer takes writes
                raise failed.exception()
            writes.append(writer.submit(cache.put, *args, **kwargs))
            while len(writes) > 1 and writes[0].done() and writes[0].exception() is None:
                writes.pop(0)

        yield put
    for write in writes:
        write.result()


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
) -> RatingRun:
    """Rate every dialogue, serving finished ones from ``cache`` and committing new ones to it.

    ``on_progress(done, total)`` counts distinct texts. Duplicated texts are rated once. A
    dialogue the judge cannot rate (no line of the rated speaker) comes back as a failure of
    kind ``input`` from the judge, without a request.
    ``retry_failures`` decides which stored failures are asked again.
    """
    fingerprint = judge.fingerprint()
    version = questionnaire.version
    keys: list[str] = []
    texts: dict[str, str] = {}
    hashes: dict[str, str] = {}
    results: dict[str, RatingResult] = {}
    for text in dialogues:
        digest = rated_text_sha256(text, tags)
        key = rating_key(fingerprint, version, digest)
        texts.setdefault(key, text)
        hashes[key] = digest
        keys.append(key)

    stats = RatingStats(items=len(keys), unique=len(texts))
    stored = cache.get_many(texts) if cache is not None else {}
    for key, result in stored.items():
        if not _should_retry(result, retry_failures):
            results[key] = result
    stats.cache_hits = sum(1 for key in results if key in stored)
    todo = [key for key in texts if key not in results]
    stats.requested = len(todo)
    done = len(results)
    if on_progress:
        on_progress(done, stats.unique)

    fresh: dict[str, RatingResult] = {}

    def commit(position: int, result: RatingResult) -> None:
        nonlocal done
        key = todo[position]
        if key in fresh:
            raise JudgeError(f"judge answered item {key} twice")
        result = result.model_copy(update={"item_id": key, "cached": False})
        put(key, result, judge=fingerprint, questionnaire=version, text_sha256=hashes[key])
        fresh[key] = result
        done += 1
        if on_progress:
            on_progress(done, stats.unique)

    with _background_writes(cache) as put:
        if todo:
            batch = [texts[key] for key in todo]
            if isinstance(judge, StreamingJudge):
                judge.rate_streaming(batch, questionnaire, tags, todo, commit)
            else:
                for start in range(0, len(todo), chunk_size):
                    answers = judge.rate(
                        batch[start : start + chunk_size],
                        questionnaire,
                        tags,
                        todo[start : start + chunk_size],
                    )
                    if len(answers) != len(batch[start : start + chunk_size]):
                        raise JudgeError(
                            f"judge returned {len(answers)} results for "
                            f"{len(batch[start : start + chunk_size])} dialogues"
                        )
                    for offset, answer in enumerate(answers):
                        commit(start + offset, answer)
            for position, key in enumerate(todo):
                if key not in fresh:  # never silently dropped: recorded, retried next run
                    commit(
                        position,
                        RatingResult(
                            item_id=key, error="judge returned no result", error_kind="transient"
                        ),
                    )
    results.update(fresh)

    for key in keys:
        result = results[key]
        if result.ok:
            stats.rated += 1
        else:
            stats.count_failure(result.error_kind or "unknown")
    for result in fresh.values():
        stats.add_usage(result)
    return RatingRun(keys, results, stats, fingerprint, version)


def ratings_table(
    run: RatingRun, questionnaire: Questionnaire, item_ids: Sequence[str] | None = None
) -> pd.DataFrame:
    """One row per input: ``item_id``, one column per trait id, ``status``, ``error_kind``,
    ``error``; ``ev.<trait id>`` columns when the judge gave expected values."""
    ids = list(item_ids) if item_ids is not None else [str(i + 1) for i in range(len(run.keys))]
    trait_ids = questionnaire.trait_ids
    rows = []
    has_expected = False
    for item_id, key in zip(ids, run.keys, strict=True):
        result = run.results[key]
        row: dict[str, object] = {ID_COLUMN: item_id}
        for trait_id in trait_ids:
            row[trait_id] = result.ratings.get(trait_id) if result.ok else None
        if result.expected:
            has_expected = True
            for trait_id in trait_ids:
                row[f"ev.{trait_id}"] = result.expected.get(trait_id)
        row[STATUS_COLUMN] = "rated" if result.ok else "failed"
        row[KIND_COLUMN] = result.error_kind
        row[ERROR_COLUMN] = result.error
        rows.append(row)
    columns = [ID_COLUMN, *trait_ids]
    if has_expected:
        columns += [f"ev.{trait_id}" for trait_id in trait_ids]
    columns += [STATUS_COLUMN, KIND_COLUMN, ERROR_COLUMN]
    table = pd.DataFrame(rows, columns=columns)
    for trait_id in trait_ids:
        values = pd.to_numeric(table[trait_id], errors="coerce")
        present = values.dropna()
        integral = bool((present == present.round()).all())
        table[trait_id] = values.astype("Int64") if integral else values.astype(float)
    return table
