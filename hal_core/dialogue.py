"""Dialogues as speaker turns: which lines belong to the rated speaker."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class SpeakerTags(BaseModel):
    """Line prefixes that mark who speaks; the rated speaker is the one judged."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rated: tuple[str, ...] = Field(default=("W",), description="Tags of the rated speaker.")
    others: tuple[str, ...] = Field(default=("I",), description="Tags of the other speakers.")

    @classmethod
    def turing(cls) -> SpeakerTags:
        """Witness (W) rated, interrogator (I) not."""
        return cls(rated=("W",), others=("I",))

    @classmethod
    def doctor_visit(cls) -> SpeakerTags:
        """Patient rated, doctor not."""
        return cls(rated=("P", "Patient"), others=("D", "Doctor", "Dr"))


@dataclass(frozen=True)
class Turn:
    speaker: str
    text: str
    rated: bool


def _tag_pattern(tags: SpeakerTags) -> re.Pattern[str]:
    names = sorted({*tags.rated, *tags.others}, key=len, reverse=True)
    alternatives = "|".join(re.escape(name) for name in names)
    return re.compile(rf"^\s*(?:\*\*)?({alternatives})(?:\*\*)?\s*[:：]\s?(.*)$", re.IGNORECASE)


def parse_turns(text: str, tags: SpeakerTags) -> list[Turn]:
    """Split a transcript into turns; untagged lines continue the previous turn."""
    pattern = _tag_pattern(tags)
    rated_names = {name.lower() for name in tags.rated}
    turns: list[Turn] = []
    for line in str(text).splitlines():
        match = pattern.match(line)
        if match:
            speaker = match.group(1)
            turns.append(Turn(speaker, match.group(2).strip(), speaker.lower() in rated_names))
        elif turns and line.strip():
            last = turns[-1]
            turns[-1] = Turn(last.speaker, f"{last.text}\n{line.strip()}".strip(), last.rated)
    return turns


def rated_turns(text: str, tags: SpeakerTags) -> list[str]:
    """The rated speaker's turns, in order."""
    return [turn.text for turn in parse_turns(text, tags) if turn.rated and turn.text]


def has_rated_speaker(text: str, tags: SpeakerTags) -> bool:
    return bool(rated_turns(text, tags))
