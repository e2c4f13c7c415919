"""The judge contract: rate one speaker of a dialogue on each trait of a questionnaire.

Every backend (an LLM behind an API, a local transformers model, recorded ratings, the local
fast judge) implements :class:`Judge`. Ratings are keyed by trait id, never by position.
Backends that can report each result as soon as it exists also implement
:class:`StreamingJudge`, so callers can commit results as they arrive (their ``rate`` comes
from :class:`RateByStreaming`); backends that can read a whole Turing game and say what gave
the human away implement :class:`StatementProposer`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hal_core.dialogue import SpeakerTags
from hal_core.questionnaire import Questionnaire

T = TypeVar("T")

ErrorKind = Literal["transient", "invalid", "rejected", "input", "missing"]
"""Why an item failed: retries exhausted on 429/5xx/timeouts (``transient``, worth another
run), a reply that stayed malformed after one repair (``invalid``), a request the endpoint
refused (``rejected``), an input the judge cannot rate (``input``), or no recorded rating
(``missing``)."""


class JudgeError(RuntimeError):
    """A judge cannot work at all (not one failed item: those are recorded per item)."""


class JudgeConfigurationError(JudgeError):
    """Wrong key, model or endpoint: every request would fail the same way, so the run stops."""


class JudgeUnreachableError(JudgeConfigurationError):
    """Every request of a run so far failed the same way (refused, timed out, the same HTTP
    error) and none succeeded: the endpoint is down or wrong, so the run stops early."""


class RatingResult(BaseModel):
    """The outcome for one dialogue: ratings by trait id, or the reason it failed."""

    model_config = ConfigDict(frozen=True)

    item_id: str = Field(description="Caller's id of the dialogue (or its text hash).")
    ratings: dict[str, float] | None = Field(
        default=None, description="Trait id -> rating on the questionnaire's scale."
    )
    expected: dict[str, float] | None = Field(
        default=None,
        description="Trait id -> expected rating under the judge's probabilities (hf only).",
    )
    error: str | None = Field(default=None, description="Why no rating was produced.")
    error_kind: ErrorKind | None = Field(default=None, description="Class of the failure.")
    latency_s: float | None = Field(
        default=None, description="Wall time from first request to final answer, retries included."
    )
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = Field(default=0, description="Requests sent, retries and repairs included.")
    cached: bool = False
    domain_distance: float | None = Field(
        default=None,
        description="Distance of the dialogue to the judge's training data, 1 at the in-domain "
        "quantile (hal_core.domain); None when the judge has no such signal.",
    )
    out_of_domain: bool | None = Field(
        default=None, description="domain_distance > 1; None when the judge has no such signal."
    )

    @property
    def ok(self) -> bool:
        return self.ratings is not None and self.error is None


@dataclass
class JudgeRunStats:
    """What a run through a judge and its cache did: the accounting that rating and statement
    runs share (per input row, unless said otherwise)."""

    items: int = 0
    answered: int = 0
    unique: int = 0
    failed: int = 0
    cache_hits: int = 0
    requested: int = 0
    claimed_elsewhere: int = 0
    """Distinct items another live run had claimed: waited for, not asked (unique)."""
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latencies: list[float] = field(default_factory=list)
    failures_by_kind: dict[str, int] = field(default_factory=dict)

    def latency_quantile(self, q: float) -> float:
        return float(np.quantile(self.latencies, q)) if self.latencies else float("nan")

    def count_failure(self, kind: str) -> None:
        self.failed += 1
        self.failures_by_kind[kind] = self.failures_by_kind.get(kind, 0) + 1

    def add_usage(self, answer: RatingResult | StatementProposal) -> None:
        """Requests, tokens and latency of a freshly asked item (not a cache hit)."""
        self.requests += answer.requests
        self.prompt_tokens += answer.prompt_tokens
        self.completion_tokens += answer.completion_tokens
        if answer.latency_s is not None:
            self.latencies.append(answer.latency_s)

    def usage_metrics(self) -> dict[str, float]:
        """Failures (also by kind), cache hits, requests, tokens and latency quantiles."""
        metrics = {
            "failures": self.failed,
            "cache_hits": self.cache_hits,
            "requested": self.requested,
            "claimed_elsewhere": self.claimed_elsewhere,
            "requests": self.requests,
            "tokens": self.prompt_tokens + self.completion_tokens,
            "tokens.prompt": self.prompt_tokens,
            "tokens.completion": self.completion_tokens,
            "latency_p50_s": self.latency_quantile(0.5),
            "latency_p95_s": self.latency_quantile(0.95),
        }
        for kind, count in sorted(self.failures_by_kind.items()):
            metrics[f"failures.{kind}"] = count
        return {key: float(value) for key, value in metrics.items()}


CHARS_PER_TOKEN = 4
"""Rough characters per token of English text, for estimates made before any request."""


@dataclass(frozen=True)
class UsageEstimate:
    """What asking a judge about some items will cost, estimated before any request."""

    items: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None = None
    """None when the judge's config has no prices."""
    refused: dict[int, str] = field(default_factory=dict)
    """Position -> why the item will not be sent (over the judge's input cap)."""

    def describe(self) -> str:
        cost = "" if self.cost_usd is None else f" = ${self.cost_usd:,.2f}"
        refused = f"; {len(self.refused)} over the input cap, not sent" if self.refused else ""
        return (
            f"~{self.prompt_tokens:,} prompt + ~{self.completion_tokens:,} completion tokens "
            f"(estimated at {CHARS_PER_TOKEN} characters a token){cost}{refused}"
        )


ResultCallback = Callable[[int, RatingResult], None]
"""Called with (position in the input, result) as soon as an item is finished."""


class Game(BaseModel):
    """One Turing-test game: two witnesses talked to the same interrogator; one was human."""

    model_config = ConfigDict(frozen=True)

    game_id: str
    transcript_a: str
    transcript_b: str


class StatementProposal(BaseModel):
    """A judge's guess of the human witness in a game and what gave the human away."""

    model_config = ConfigDict(frozen=True)

    game_id: str
    verdict: str | None = Field(default=None, description="'A' or 'B'.")
    statements: list[str] = Field(default_factory=list)
    error: str | None = None
    error_kind: ErrorKind | None = Field(default=None, description="Class of the failure.")
    latency_s: float | None = Field(
        default=None, description="Wall time from first request to final answer, retries included."
    )
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = Field(default=0, description="Requests sent, retries and repairs included.")

    @property
    def ok(self) -> bool:
        return self.verdict is not None and self.error is None


@runtime_checkable
class Judge(Protocol):
    """Rates the rated speaker of dialogues on every trait of a questionnaire."""

    def fingerprint(self) -> str:
        """A stable hash of everything that changes this judge's answers (cache key)."""
        ...

    def rate(
        self,
        dialogues: Sequence[str],
        questionnaire: Questionnaire,
        tags: SpeakerTags,
        item_ids: Sequence[str] | None = None,
    ) -> list[RatingResult]:
        """One result per dialogue, in input order."""
        ...


@runtime_checkable
class StreamingJudge(Judge, Protocol):
    """A judge that reports every result as soon as it is final (so it can be committed)."""

    def rate_streaming(
        self,
        dialogues: Sequence[str],
        questionnaire: Questionnaire,
        tags: SpeakerTags,
        item_ids: Sequence[str] | None,
        on_result: ResultCallback,
    ) -> None:
        """Call ``on_result(position, result)`` exactly once per dialogue, in any order."""
        ...


def collect_streamed(count: int, stream: Callable[[Callable[[int, T], None]], None]) -> list[T]:
    """What ``stream(on_result)`` reports for ``count`` inputs, in input order (an input it
    never reported is left out: the caller's runner records it as unanswered)."""
    answers: list[T | None] = [None] * count

    def keep(position: int, answer: T) -> None:
        answers[position] = answer

    stream(keep)
    return [answer for answer in answers if answer is not None]


class RateByStreaming:
    """Mixin for a class with ``rate_streaming``: its ``rate`` collects the streamed results."""

    def rate(
        self,
        dialogues: Sequence[str],
        questionnaire: Questionnaire,
        tags: SpeakerTags,
        item_ids: Sequence[str] | None = None,
    ) -> list[RatingResult]:
        """One result per dialogue, in input order."""
        return collect_streamed(
            len(dialogues),
            lambda keep: self.rate_streaming(dialogues, questionnaire, tags, item_ids, keep),
        )


def item_ids_or_positions(dialogues: Sequence[str], item_ids: Sequence[str] | None) -> list[str]:
    """The caller's ids of the dialogues, or their positions (``"0"``, ``"1"``...) when None."""
    ids = list(item_ids) if item_ids is not None else [str(i) for i in range(len(dialogues))]
    if len(ids) != len(dialogues):
        raise ValueError(f"{len(ids)} item ids for {len(dialogues)} dialogues")
    return ids


@runtime_checkable
class EstimatingJudge(Protocol):
    """A judge that can tell, before any request, what asking about items will cost and which
    items it will refuse (an API judge with an input cap and prices)."""

    def estimate_ratings(
        self, dialogues: Sequence[str], questionnaire: Questionnaire, tags: SpeakerTags
    ) -> UsageEstimate: ...

    def estimate_statements(self, games: Sequence[Game], tags: SpeakerTags) -> UsageEstimate: ...


@runtime_checkable
class StatementProposer(Protocol):
    """Reads a whole game, guesses the human witness and says what gave them away."""

    def fingerprint(self) -> str: ...

    def propose_statements(
        self, games: Sequence[Game], tags: SpeakerTags
    ) -> list[StatementProposal]:
        """One proposal per game, in input order; failures carry ``error``, never a guess."""
        ...


@runtime_checkable
class StreamingProposer(StatementProposer, Protocol):
    """A proposer that reports every game as soon as it is final (so it can be committed)."""

    def propose_streaming(
        self,
        games: Sequence[Game],
        tags: SpeakerTags,
        on_result: Callable[[int, StatementProposal], None],
    ) -> None:
        """Call ``on_result(position, proposal)`` exactly once per game, in any order."""
        ...
