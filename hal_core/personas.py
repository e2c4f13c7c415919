"""Persona prompts read into their parts, and the compact persona card a small policy role-plays.

``synthlabs/prompts_*.csv`` hold one prompt per ``persona_id``; every prompt has the same
instructions around three fields: ``Biography:``, ``Medical condition:`` and ``Reason for
clinical visit:``. Capable models get the whole prompt (the paper's protocol). A 135M model
given the ~550-token prompt loses the thread, so the role-play protocol gives it a card of
about a hundred tokens built from the same row: who the patient is (name and the opening of
the biography), the condition and why they came. A prompt longer than
:data:`MAX_PROMPT_CHARS` is refused with its file and row, never cut.

The card is built from the prompt row, not from ``personas.json``: the prompts' ``persona_id``
is a prompt number (train 0-1799, test 0-199, four consecutive prompts written from one
persona with jittered ages and different conditions), while ``personas.json`` lists its 500
personas in another, unrecorded order and has no condition or reason for the visit, so no
``persona_id`` names a ``personas.json`` row.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from hal_core.tables import ROW_COLUMN, TableError, read_table

_FIELDS = re.compile(
    r"Biography:\s*(?P<biography>.*?)\s*Medical condition:\s*(?P<condition>.*?)\s*"
    r"Reason for clinical visit:\s*(?P<reason>.*?)\s*(?:</input_data>|$)",
    re.S,
)
_NAME_RUN = re.compile(r"\b([A-Z][\w'’-]+(?: (?:[A-Z][\w'’-]+|de|del|la|van|von|da|di|le)){1,3})\b")
_FIELDS_ORDER = ("biography", "condition", "reason")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"“'‘(])")

MAX_PROMPT_CHARS = 8000
"""Longest persona prompt accepted, about three times the longest real one (2,842 characters
in synthlabs). A longer one is refused, not cut: the whole protocol sends the prompt as it is
(the paper's prompt, cut, is another prompt; 8,000 characters are about 2,000 tokens, what a
small policy's context still holds with a dialogue), and the role-play card keeps only the
opening of the biography by design, so a cut there would silently play a persona that is
not the row's. A prompt that long is a broken row (an unclosed quote that swallowed the rows
after it, a pasted document), which is the file's to fix."""


class PersonaPrompt(BaseModel):
    """One persona prompt and the fields read out of it."""

    model_config = ConfigDict(frozen=True)

    persona_id: str
    prompt: str = Field(description="The whole prompt (the paper's protocol sends it as is).")
    name: str = Field(description="The patient's name, as the biography gives it.")
    biography: str
    condition: str
    reason: str

    @property
    def first_name(self) -> str:
        return self.name.split()[0]


def sentences(text: str) -> list[str]:
    """``text`` split after ``.``, ``!`` or ``?`` followed by a capitalised word."""
    return [part.strip() for part in _SENTENCE_END.split(text.strip()) if part.strip()]


def patient_name(biography: str, reason: str) -> str:
    """The first run of two to four capitalised words in the biography whose first word comes
    back later (the biography and the reason call the patient by first name); else the first
    such run; else ``"the patient"``."""
    runs = [(match.start(), match.group(1)) for match in _NAME_RUN.finditer(biography)]
    for start, run in runs:
        rest = biography[start + len(run) :] + " " + reason
        if re.search(rf"\b{re.escape(run.split()[0])}\b", rest):
            return run
    return runs[0][1] if runs else "the patient"


def parse_persona_prompt(persona_id: str, prompt: str, where: str) -> PersonaPrompt:
    """The fields of one prompt; ``where`` (file and row) names it in the error."""
    match = _FIELDS.search(prompt)
    if match is None:
        raise TableError(
            f"{where}: the prompt lacks 'Biography:', 'Medical condition:' and 'Reason for "
            "clinical visit:' in that order (rule: a persona prompt has all three)"
        )
    biography, condition, reason = (" ".join(match.group(k).split()) for k in _FIELDS_ORDER)
    if not biography or not condition or not reason:
        raise TableError(f"{where}: an empty Biography, condition or reason field")
    return PersonaPrompt(
        persona_id=persona_id,
        prompt=prompt,
        name=patient_name(biography, reason),
        biography=biography,
        condition=condition,
        reason=reason,
    )


def load_persona_prompts(
    path: str | Path,
    limit: int | None = None,
    persona_ids: list[str] | None = None,
    max_chars: int = MAX_PROMPT_CHARS,
) -> list[PersonaPrompt]:
    """The persona prompts of ``path`` in file order: the first ``limit``, or those named by
    ``persona_ids`` (in that order). Errors name the file and row: a file without prompt rows,
    an empty selection, and a prompt over ``max_chars`` characters are refused."""
    table = read_table(path)
    for column in ("persona_id", "prompt"):
        if column not in table.columns:
            raise TableError(f"{path}: no column {column!r} (rule: persona prompts have it)")
    if table.empty:
        raise TableError(f"{path}: no prompt rows under the header (rule: at least one prompt row)")
    if limit is not None and limit < 1:
        raise ValueError(f"{path}: limit {limit} selects no prompt (rule: a limit is at least 1)")
    if persona_ids is not None and not persona_ids:
        raise TableError(
            f"{path}: persona_ids is empty (rule: name at least one, or leave it unset)"
        )
    ids = table["persona_id"].astype(str)
    repeated = table.loc[ids.duplicated(keep=False), ROW_COLUMN].tolist()
    if repeated:
        raise TableError(f"{path} rows {repeated[:10]}: persona_id repeats (rule: unique ids)")
    if persona_ids is not None:
        by_id = dict(zip(ids, table.index, strict=True))
        missing = [pid for pid in persona_ids if str(pid) not in by_id]
        if missing:
            raise TableError(f"{path}: no persona_id {missing[:10]} (rule: named ids exist)")
        table = table.loc[[by_id[str(pid)] for pid in persona_ids]]
    elif limit is not None:
        table = table.head(limit)
    lengths = table["prompt"].fillna("").astype(str).str.len()
    over = [
        f"row {row} (persona_id {persona_id}) has {length:,}"
        for row, persona_id, length in zip(
            table[ROW_COLUMN], table["persona_id"], lengths, strict=True
        )
        if length > max_chars
    ]
    if over:
        raise TableError(
            f"{path} column 'prompt': {'; '.join(over[:10])} characters (rule: a persona prompt "
            f"has at most {max_chars:,} characters; longer ones are refused, not cut)"
        )
    return [
        parse_persona_prompt(str(persona_id), str(prompt), f"{path} row {row}")
        for persona_id, prompt, row in zip(
            table["persona_id"], table["prompt"], table[ROW_COLUMN], strict=True
        )
    ]


def _clip_words(text: str, max_words: int) -> str:
    words = text.split()
    if len(words) <= max_words:
        return text
    return " ".join(words[:max_words]).rstrip(",;:") + "…"


class CardSettings(BaseModel):
    """How much of the persona goes into the role-play card."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    biography_words: int = Field(
        default=35, ge=5, description="Words of the biography's opening sentences kept."
    )
    reason_words: int = Field(default=25, ge=5, description="Words of the visit reason kept.")


def persona_card(persona: PersonaPrompt, settings: CardSettings | None = None) -> str:
    """The system prompt of the role-play protocol: the model is this patient."""
    settings = settings or CardSettings()
    about: list[str] = []
    for sentence in sentences(persona.biography):
        if about and len(" ".join([*about, sentence]).split()) > settings.biography_words:
            break
        about.append(sentence)
    biography = _clip_words(" ".join(about), settings.biography_words)
    reason = _clip_words(sentences(persona.reason)[0], settings.reason_words)
    return (
        f"You are {persona.name}, a patient talking to your doctor. Stay in character: answer "
        f"the doctor as {persona.first_name} would, in your own words, in one to three short "
        "sentences.\n"
        f"About you: {biography}\n"
        f"Your condition: {persona.condition.rstrip('.')}.\n"
        f"Why you came today: {reason}"
    )
