"""The judge contract: rate one speaker of a dialogue on each trait of a questionnaire.

Every backend (an LLM behind an API, a local transformers model, recorded ratings, the local
fast judge) implements :class:`Judge`. Ratings are keyed by trait id, never by position.
Backends that can report each result as soon as it exists also implement
:class:`StreamingJudge`, so callers can commit results as they arrive; backends that can read
a whole Turing game and say what gave the human away implement :class:`StatementProposer`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from hal_core.dialogue import SpeakerTags
from hal_core.questionnaire import Questionnaire

ErrorKind = Literal["transient", "invalid", "rejected", "input", "missing"]
"""Why an item failed: retries exhausted on 429/5xx/timeouts (``transient``, worth another
run), a reply that stayed malformed after one repair (``invalid``), a request the endpoint
refused (``rejected``), an input the judge cannot rate (``input``), or no recorded rating
(``missing``)."""


class JudgeError(RuntimeError):
    """A judge cannot work at all (not one failed item: those are recorded per item)."""


class JudgeConfigurationError(JudgeError):
    """Wrong key, model or endpoint: every request would fail the same way, so the run stops."""


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

    @property
    def ok(self) -> bool:
        return self.ratings is not None and self.error is None


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
    prompt_tokens: int = 0
    completion_tokens: int = 0

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


@runtime_checkable
class StatementProposer(Protocol):
    """Reads a whole game, guesses the human witness and says what gave them away."""

    def fingerprint(self) -> str: ...

    def propose_statements(
        self, games: Sequence[Game], tags: SpeakerTags
    ) -> list[StatementProposal]:
        """One proposal per game, in input order; failures carry ``error``, never a guess."""
        ...
