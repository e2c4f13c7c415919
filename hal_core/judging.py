"""The judge contract: rate one speaker of a dialogue on each trait of a questionnaire.

Every backend (an LLM behind an API, a local transformers model, recorded ratings, the local
fast judge) implements :class:`Judge`. Ratings are keyed by trait id, never by position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from hal_core.dialogue import SpeakerTags
from hal_core.questionnaire import Questionnaire


class RatingResult(BaseModel):
    """The outcome for one dialogue: ratings by trait id, or the reason it failed."""

    model_config = ConfigDict(frozen=True)

    item_id: str = Field(description="Caller's id of the dialogue (or its text hash).")
    ratings: dict[str, float] | None = Field(
        default=None, description="Trait id -> rating on the questionnaire's scale."
    )
    error: str | None = Field(default=None, description="Why no rating was produced.")
    latency_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.ratings is not None and self.error is None


class StatementProposal(BaseModel):
    """A judge's guess of the human witness in a game and what gave the human away."""

    model_config = ConfigDict(frozen=True)

    game_id: str
    verdict: str | None = Field(default=None, description="'A' or 'B'.")
    statements: list[str] = Field(default_factory=list)
    error: str | None = None


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
