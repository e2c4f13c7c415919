"""Dialogues as speaker turns: which lines belong to the rated speaker.

Generated dialogues are untidy. Besides ``P:``/``D:`` they use ``Patient:``/``Doctor:``,
``Dr. Patel:``, the patient's name (``Sofia:``, ``G:``), numbered lines (``3. P: ...``), bold
markdown tags (``**P:**``, ``**Patient**:``), a space before the colon (``P :``) and stage
directions (``P (nervously): ...``). :func:`parse_dialogue` reads all of these and says why when
it cannot tell who the rated speaker is (e.g. every line is tagged ``D:``), so such dialogues are
reported instead of silently rated on the wrong speaker's words.

Rules, in order:

1. A line starts a turn when it begins (after optional numbering and markdown emphasis) with a
   known tag of ``tags`` (case-insensitive; a multi-letter tag also matches as the first word,
   so ``Dr. Patel`` is ``Dr``), or, when ``tags.infer_rated`` is set, with a capitalised name
   of at most three words that starts at least two lines (or the first line). Other lines,
   bullets such as ``- Diet: ...`` included, continue the previous turn.
2. Lines before the first turn (a model's preamble) are dropped.
3. The rated speaker is every speaker with a rated tag. Failing that, and only when
   ``tags.infer_rated`` is set, the one speaker that is neither rated nor other (``Sofia``
   talking to ``Doctor``). Otherwise the dialogue is unparseable and ``error`` says why.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field


class SpeakerTags(BaseModel):
    """Line prefixes that mark who speaks; the rated speaker is the one judged."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rated: tuple[str, ...] = Field(default=("W",), description="Tags of the rated speaker.")
    others: tuple[str, ...] = Field(default=("I",), description="Tags of the other speakers.")
    infer_rated: bool = Field(
        default=False,
        description="Accept unknown speaker names as tags; when no rated tag occurs, rate the "
        "single speaker that is not an 'other' (e.g. 'Sofia:' talking to 'Doctor:').",
    )

    @classmethod
    def turing(cls) -> SpeakerTags:
        """Witness (W) rated, interrogator (I) not."""
        return cls(rated=("W",), others=("I",))

    @classmethod
    def doctor_visit(cls) -> SpeakerTags:
        """Patient rated, doctor not; a patient who speaks under their name is found too."""
        return cls(rated=("P", "Patient"), others=("D", "Doctor", "Dr"), infer_rated=True)


@dataclass(frozen=True)
class Turn:
    speaker: str
    text: str
    rated: bool


@dataclass(frozen=True)
class ParsedDialogue:
    """The turns of a dialogue, who is rated, and why not when that cannot be told."""

    turns: tuple[Turn, ...]
    rated_speakers: tuple[str, ...] = ()
    inferred: bool = False
    error: str | None = None
    speakers: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def rated_texts(self) -> list[str]:
        return [turn.text for turn in self.turns if turn.rated and turn.text]

    @property
    def other_texts(self) -> list[str]:
        return [turn.text for turn in self.turns if not turn.rated and turn.text]


class UnparseableDialogueError(ValueError):
    """A dialogue whose rated speaker cannot be told; the message says why."""


_NUMBERING = r"(?:\(?\d{1,3}[.)\]]\s*|\[\d{1,3}\]\s*|#{1,3}\s*|>\s*)?"
_EMPHASIS = r"(?:\*{1,2}|_{2})?"
_NAME = r"(?:(?:Dr|Mr|Mrs|Ms|Miss|Prof)\.?\s+)?[^\W\d_][\w'’.-]*(?:\s+[^\W\d_][\w'’.-]*){0,2}"
_LINE = re.compile(
    rf"^\s*{_NUMBERING}{_EMPHASIS}\s*(?P<tag>{_NAME})\s*{_EMPHASIS}"
    rf"\s*(?:\((?P<aside>[^)]{{0,60}})\)\s*)?{_EMPHASIS}\s*[:：]\s*{_EMPHASIS}\s?(?P<text>.*)$"
)


def _clean_tag(tag: str) -> str:
    return re.sub(r"\s+", " ", tag.strip().rstrip(".")).strip()


@lru_cache(maxsize=64)
def _roles(rated: tuple[str, ...], others: tuple[str, ...]) -> dict[str, str]:
    roles = {name.lower(): "other" for name in others}
    roles.update({name.lower(): "rated" for name in rated})
    return roles


def _role(tag: str, tags: SpeakerTags) -> str | None:
    """'rated', 'other' or None (unknown) for a cleaned tag."""
    roles = _roles(tags.rated, tags.others)
    lowered = tag.lower()
    if lowered in roles:
        return roles[lowered]
    first = lowered.split(" ")[0].rstrip(".")
    if len(first) >= 2 and first in roles and " " in lowered:
        return roles[first]
    return None


def _is_name(tag: str) -> bool:
    # Unknown speakers are capitalised names (``Sofia``, ``Alyssa Graham``, ``G``).
    return tag[:1].isupper() and all(
        word[:1].isupper() or word.rstrip(".") in {"Dr", "Mr", "Mrs", "Ms"}
        for word in tag.split(" ")
    )


def parse_dialogue(text: str, tags: SpeakerTags) -> ParsedDialogue:
    """Turns of a transcript and its rated speaker, or the reason it has none (see module doc)."""
    lines = str(text).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    candidates: list[tuple[str, str] | None] = []
    unknown_counts: Counter[str] = Counter()
    for line in lines:
        match = _LINE.match(line)
        if match is None:
            candidates.append(None)
            continue
        tag = _clean_tag(match.group("tag"))
        candidates.append((tag, match.group("text")))
        if _role(tag, tags) is None and _is_name(tag):
            unknown_counts[tag] += 1
    first_content = next((i for i, line in enumerate(lines) if line.strip()), None)

    turns: list[tuple[str, str]] = []
    for index, (line, candidate) in enumerate(zip(lines, candidates, strict=True)):
        is_turn = False
        if candidate is not None:
            tag = candidate[0]
            if _role(tag, tags) is not None:
                is_turn = True
            elif tags.infer_rated and _is_name(tag):
                is_turn = unknown_counts[tag] >= 2 or index == first_content
        if is_turn:
            turns.append((candidate[0], candidate[1].strip()))
        elif turns and line.strip():
            speaker, body = turns[-1]
            turns[-1] = (speaker, f"{body}\n{line.strip()}".strip())

    speakers = dict(Counter(speaker for speaker, _ in turns))
    if not turns:
        return _unparseable((), speakers, "no speaker-tagged line (expected lines like 'P: ...')")
    rated = tuple(s for s in speakers if _role(s, tags) == "rated")
    inferred = False
    if not rated:
        unknown = tuple(s for s in speakers if _role(s, tags) is None)
        wanted = "/".join(tags.rated)
        if not tags.infer_rated or not unknown:
            seen = ", ".join(f"{s} ({n})" for s, n in speakers.items())
            return _unparseable(
                _as_turns(turns, ()),
                speakers,
                f"no turn of the rated speaker ({wanted}); every turn is tagged as another "
                f"speaker: {seen}",
            )
        if len(unknown) > 1:
            return _unparseable(
                _as_turns(turns, ()),
                speakers,
                f"no {wanted} tag and several possible rated speakers: {', '.join(unknown)}",
            )
        rated, inferred = unknown, True
    parsed = _as_turns(turns, rated)
    if not any(turn.rated and turn.text for turn in parsed):
        return _unparseable(parsed, speakers, f"the rated speaker ({'/'.join(rated)}) says nothing")
    return ParsedDialogue(parsed, rated, inferred, None, speakers)


def _as_turns(turns: list[tuple[str, str]], rated: tuple[str, ...]) -> tuple[Turn, ...]:
    return tuple(Turn(speaker, body, speaker in rated) for speaker, body in turns)


def _unparseable(turns: tuple[Turn, ...], speakers: dict[str, int], reason: str):
    return ParsedDialogue(turns, (), False, reason, speakers)


def parse_turns(text: str, tags: SpeakerTags) -> list[Turn]:
    """Split a transcript into turns; untagged lines continue the previous turn.

    An unparseable dialogue gives its turns with none marked rated (see :func:`parse_dialogue`
    for the reason).
    """
    return list(parse_dialogue(text, tags).turns)


def rated_turns(text: str, tags: SpeakerTags) -> list[str]:
    """The rated speaker's turns, in order."""
    return parse_dialogue(text, tags).rated_texts


def has_rated_speaker(text: str, tags: SpeakerTags) -> bool:
    return bool(rated_turns(text, tags))


def chat_messages(
    transcript: str, tags: SpeakerTags, system: str | None = None
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """A transcript as chat messages for training the rated speaker: ``(prompt, completion)``.

    The rated speaker is the ``assistant`` and everyone else the ``user``. The prompt is the
    optional ``system`` message and the turns before the rated speaker's first one; the
    completion is the rest. Raises :class:`UnparseableDialogueError` when no turn is rated.
    """
    parsed = parse_dialogue(transcript, tags)
    if not parsed.ok:
        raise UnparseableDialogueError(parsed.error)
    messages = [
        {"role": "assistant" if turn.rated else "user", "content": turn.text}
        for turn in parsed.turns
        if turn.text
    ]
    first = next(i for i, message in enumerate(messages) if message["role"] == "assistant")
    prompt = ([{"role": "system", "content": system}] if system else []) + messages[:first]
    return prompt, messages[first:]
