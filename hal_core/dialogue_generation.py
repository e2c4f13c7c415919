"""A policy speaks as the patient of a doctor's visit: two protocols, degeneracy flags, the table.

- ``whole`` (the paper's protocol, for capable models): the persona prompt asks for the whole
  conversation; the reply is read with :func:`hal_core.dialogue.parse_dialogue` and rewritten
  as ``P:``/``D:`` lines.
- ``roleplay`` (for small models): the persona card (:func:`hal_core.personas.persona_card`) is
  the system prompt, the doctor's lines come from a versioned doctor script, and the policy
  writes each patient turn (:func:`clean_patient_turn` strips the tags it adds and cuts where it
  starts speaking as the doctor).

Every job (persona x sample) is sampled from its own seed, batched across jobs, and committed
to the :class:`~hal_core.generation_cache.GenerationCache` as it finishes
(:func:`run_generation`). Degenerate dialogues (empty, spoken as the doctor, repeated lines,
too short) are kept with their reason (:func:`degenerate_reason`) and excluded from pairs
downstream. :func:`dialogue_table` writes the generated-dialogues contract.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from hal_core.dialogue import SpeakerTags, parse_dialogue
from hal_core.doctor_script import DoctorScript
from hal_core.generation import ChatBatch, SamplingSettings, complete_chats, row_seed
from hal_core.generation_cache import GeneratedDialogue, GenerationCache, generation_key
from hal_core.personas import CardSettings, PersonaPrompt, persona_card

Protocol = Literal["roleplay", "whole"]

DIALOGUE_COLUMNS = (
    "dialogue_id",
    "persona_id",
    "prompt_id",
    "model",
    "checkpoint",
    "epoch",
    "seed",
    "sample_index",
    "protocol",
    "doctor_script",
    "system_prompt",
    "dialogue",
    "n_turns",
    "patient_words",
    "degenerate",
)
"""The generated-dialogues table, one row per dialogue (the contract rating and evaluate read)."""

DEGENERATE_REASONS = ("empty", "wrong_speaker_tags", "repeated_lines", "too_short")
"""Reasons in the order they are checked; a dialogue gets the first that applies."""

WRONG_SPEAKER = "wrong_speaker_tags"
TRUNCATED = "truncated"
"""An issue, not a degenerate reason: a turn reached the token limit."""


# -- cleaning a patient turn -------------------------------------------------------------------

_TAG = re.compile(
    r"^\s*(?:\*{1,2}|_{2})?\s*(?P<tag>[A-Za-z][\w'’. -]{0,30}?)\s*(?:\*{1,2}|_{2})?\s*"
    r"(?:\([^)]{0,60}\)\s*)?[:：]\s*(?:\*{1,2}|_{2})?\s*"
)
_INLINE_DOCTOR = re.compile(r"(?<=[.!?…\"”])\s+\**(?:D|Doctor|Dr\.?\s+[A-Z][\w'’-]*)\**\s*:\**\s")
_DOCTOR_TAGS = ("d", "doctor", "dr", "physician", "nurse")
_PATIENT_TAGS = ("p", "patient", "me", "you")


def _tag_role(tag: str, persona: PersonaPrompt | None) -> str | None:
    lowered = " ".join(tag.lower().replace(".", " ").split())
    first = lowered.split(" ")[0] if lowered else ""
    if lowered in _DOCTOR_TAGS or first in ("dr", "doctor"):
        return "doctor"
    names = set(_PATIENT_TAGS)
    if persona is not None:
        names |= {persona.name.lower(), persona.first_name.lower()}
    if lowered in names:
        return "patient"
    return None


_LAST_SENTENCE_END = re.compile(r"^(.*[.!?…][\"'”’)]*)(?:\s|$)", re.S)


def clean_patient_turn(
    text: str, persona: PersonaPrompt | None = None, finished: bool = True
) -> tuple[str, list[str]]:
    """The patient's words of one reply, and what was wrong with it.

    A leading patient tag (``P:``, ``Patient:``, the patient's name) is removed; the reply is
    cut at the first line tagged as the doctor (``D:``, ``Doctor:``, ``Dr. Lee:``, issue
    ``wrong_speaker_tags``); patient tags on later lines are removed; lines are joined with
    spaces. A reply cut by the token limit (``finished`` false) loses its unfinished last
    sentence when an earlier one ended (issue ``truncated``).
    """
    kept: list[str] = []
    issues: list[str] = []
    for line in text.replace("\r", "\n").split("\n"):
        body = line.strip()
        if not body:
            continue
        match = _TAG.match(body)
        if match:
            role = _tag_role(match.group("tag"), persona)
            if role == "doctor":
                issues.append(WRONG_SPEAKER)
                finished = True  # the patient's part ended where the doctor's began
                break
            if role == "patient":
                body = body[match.end() :].strip()
        inline = _INLINE_DOCTOR.search(body)
        if inline:
            kept.append(body[: inline.start()].strip())
            issues.append(WRONG_SPEAKER)
            finished = True
            break
        if body:
            kept.append(body)
    cleaned = " ".join(part for part in kept if part).strip().strip('"“”').strip()
    if not finished:
        issues.append(TRUNCATED)
        whole = _LAST_SENTENCE_END.match(cleaned)
        if whole:
            cleaned = whole.group(1).strip()
    return cleaned, issues


# -- degeneracy -------------------------------------------------------------------------------


class DegenerateRules(BaseModel):
    """When a generated dialogue is degenerate (kept, flagged, excluded from pairs)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_patient_words: int = Field(
        default=8, ge=0, description="Fewer patient words in the whole dialogue: too_short."
    )
    min_turn_words: int = Field(
        default=1, ge=0, description="A patient turn with fewer words: too_short."
    )
    max_sentence_repeats: int = Field(
        default=2,
        ge=1,
        description="A patient sentence (of 3+ words) said more often than this: repeated_lines.",
    )
    min_distinct_bigrams: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Share of distinct word bigrams in the patient's words (when 20+ words) "
        "below this: repeated_lines (a loop).",
    )


def _normalised(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def _patient_sentences(turns: Sequence[str]) -> list[str]:
    pieces = []
    for turn in turns:
        pieces += [_normalised(s) for s in re.split(r"(?<=[.!?])\s+|\n+", turn)]
    return [piece for piece in pieces if len(piece.split()) >= 3]


def distinct_bigram_ratio(words: Sequence[str]) -> float:
    """Distinct word bigrams / all bigrams (1.0 for fewer than two words)."""
    bigrams = list(pairwise(words))
    return len(set(bigrams)) / len(bigrams) if bigrams else 1.0


def degenerate_reason(
    patient_turns: Sequence[str], issues: Sequence[str] = (), rules: DegenerateRules | None = None
) -> str:
    """``""`` for a usable dialogue, else the first reason of :data:`DEGENERATE_REASONS`."""
    rules = rules or DegenerateRules()
    words = _normalised(" ".join(patient_turns)).split()
    if not words:
        return "empty"
    if WRONG_SPEAKER in issues:
        return WRONG_SPEAKER
    normalised_turns = [_normalised(turn) for turn in patient_turns if _normalised(turn)]
    if len(set(normalised_turns)) < len(normalised_turns):
        return "repeated_lines"
    counts = Counter(_patient_sentences(patient_turns))
    if counts and max(counts.values()) > rules.max_sentence_repeats:
        return "repeated_lines"
    if len(words) >= 20 and distinct_bigram_ratio(words) < rules.min_distinct_bigrams:
        return "repeated_lines"
    if len(words) < rules.min_patient_words or any(
        len(_normalised(turn).split()) < rules.min_turn_words for turn in patient_turns
    ):
        return "too_short"
    return ""


# -- jobs -------------------------------------------------------------------------------------


class GenerationSpec(BaseModel):
    """How dialogues are generated (everything but the policy and the personas)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    protocol: Protocol = Field(
        default="roleplay",
        description="roleplay: persona card + doctor script, the policy writes the patient's "
        "turns (small models); whole: the persona prompt, the policy writes the whole "
        "conversation (the paper's protocol).",
    )
    n_turns: int = Field(default=4, ge=1, description="Patient turns (roleplay).")
    sampling: SamplingSettings = Field(
        default_factory=lambda: SamplingSettings(
            n_candidates=1, max_new_tokens=48, temperature=0.8, top_p=0.95, batch_size=16
        ),
        description="n_candidates = dialogues per persona; max_new_tokens = per patient turn "
        "(roleplay) or per dialogue (whole); seed = the run seed each dialogue's seed mixes in.",
    )
    card: CardSettings = Field(default_factory=CardSettings, description="Persona card size.")
    dtype: Literal["float32", "bfloat16", "float16", "int8-dynamic"] = Field(
        default="float32",
        description="Precision the policy runs in (float32 on CPU; int8-dynamic: int8 Linear "
        "layers on CPU).",
    )

    @property
    def samples_per_persona(self) -> int:
        return self.sampling.n_candidates

    @property
    def seed(self) -> int:
        return self.sampling.seed

    def cache_settings(self) -> dict:
        """The settings that decide a dialogue's text (batch size, count and seed excluded:
        the seed and sample index key each dialogue on their own)."""
        sampling = self.sampling.model_dump(exclude={"batch_size", "n_candidates", "seed"})
        payload = {"sampling": sampling, "protocol": self.protocol, "dtype": self.dtype}
        if self.protocol == "roleplay":
            payload |= {"n_turns": self.n_turns, "card": self.card.model_dump()}
        return payload


@dataclass(frozen=True)
class GenerationJob:
    """One dialogue to generate: a persona, a sample index, its prompt and its doctor lines."""

    persona: PersonaPrompt
    sample_index: int
    system: str
    """The persona card (roleplay) or the whole persona prompt (whole)."""
    doctor_lines: tuple[str, ...]
    key: str

    def turn_seed(self, run_seed: int, turn: int) -> int:
        return row_seed(run_seed, self.persona.persona_id, self.sample_index, turn)


def build_jobs(
    personas: Sequence[PersonaPrompt],
    spec: GenerationSpec,
    policy_fingerprint: str,
    script: DoctorScript | None,
) -> list[GenerationJob]:
    """Jobs in persona order, ``samples_per_persona`` each, with their cache keys."""
    if spec.protocol == "roleplay" and script is None:
        raise ValueError("the roleplay protocol needs a doctor script")
    settings = spec.cache_settings()
    jobs = []
    for persona in personas:
        for sample in range(spec.samples_per_persona):
            if spec.protocol == "roleplay":
                system = persona_card(persona, spec.card)
                # One doctor per persona: its samples differ only in the patient's turns, so
                # any two of them make a preference pair on the same conversation.
                choice = row_seed(spec.seed, persona.persona_id, "doctor")
                lines = tuple(script.lines(spec.n_turns, choice, persona.first_name, persona.name))
            else:
                system, lines = persona.prompt, ()
            key = generation_key(
                policy=policy_fingerprint,
                protocol=spec.protocol,
                doctor_script=script.fingerprint if spec.protocol == "roleplay" else "",
                persona_id=persona.persona_id,
                prompt=system,
                doctor_lines=lines,
                seed=spec.seed,
                sample_index=sample,
                settings=settings,
            )
            jobs.append(GenerationJob(persona, sample, system, lines, key))
    return jobs


# -- protocols --------------------------------------------------------------------------------


def roleplay_batch(
    model, tokenizer, jobs: Sequence[GenerationJob], spec: GenerationSpec
) -> list[GeneratedDialogue]:
    """The patient's turns of a batch of role-played visits, turn by turn over one KV cache.

    The model's context is its own replies as generated; the recorded turns are cleaned
    (:func:`clean_patient_turn`), and a reply in which it spoke as the doctor is flagged.
    """
    chats = ChatBatch(model, tokenizer, spec.sampling)
    chats.start(
        [
            [
                {"role": "system", "content": job.system},
                {"role": "user", "content": job.doctor_lines[0]},
            ]
            for job in jobs
        ]
    )
    turns: list[list[str]] = [[] for _ in jobs]
    raw: list[list[str]] = [[] for _ in jobs]
    issues: list[set[str]] = [set() for _ in jobs]
    tokens = [0] * len(jobs)
    for turn in range(spec.n_turns):
        if turn:
            chats.add_user_turn([job.doctor_lines[turn] for job in jobs])
        replies = chats.reply([job.turn_seed(spec.seed, turn) for job in jobs])
        for index, (job, reply) in enumerate(zip(jobs, replies, strict=True)):
            text, found = clean_patient_turn(reply.text, job.persona, reply.finished)
            issues[index].update(found)
            turns[index].append(text)
            raw[index].append(reply.text)
            tokens[index] += reply.new_tokens
    return [
        GeneratedDialogue(
            dialogue="\n".join(
                f"D: {doctor}\nP: {patient}"
                for doctor, patient in zip(job.doctor_lines, turns[i], strict=True)
            ),
            patient_turns=tuple(turns[i]),
            issues=tuple(sorted(issues[i])),
            raw=tuple(raw[i]),
            new_tokens=tokens[i],
        )
        for i, job in enumerate(jobs)
    ]


def whole_batch(
    model, tokenizer, jobs: Sequence[GenerationJob], spec: GenerationSpec
) -> list[GeneratedDialogue]:
    """Whole conversations for a batch of persona prompts, rewritten as ``P:``/``D:`` lines."""
    replies = complete_chats(
        model,
        tokenizer,
        [[{"role": "user", "content": job.system}] for job in jobs],
        [job.turn_seed(spec.seed, 0) for job in jobs],
        spec.sampling,
    )
    return [whole_dialogue(reply.text, reply.new_tokens) for reply in replies]


def whole_dialogue(text: str, new_tokens: int = 0) -> GeneratedDialogue:
    """A whole generated conversation as ``P:``/``D:`` lines; one whose patient cannot be told
    keeps its text and is flagged ``wrong_speaker_tags``."""
    parsed = parse_dialogue(text, SpeakerTags.doctor_visit())
    if not parsed.ok:
        return GeneratedDialogue(
            dialogue=text.strip(),
            patient_turns=(),
            issues=(WRONG_SPEAKER,) if text.strip() else (),
            raw=(text,),
            new_tokens=new_tokens,
        )
    lines = [
        f"{'P' if turn.rated else 'D'}: {' '.join(turn.text.split())}" for turn in parsed.turns
    ]
    return GeneratedDialogue(
        dialogue="\n".join(lines),
        patient_turns=tuple(" ".join(t.text.split()) for t in parsed.turns if t.rated),
        raw=(text,),
        new_tokens=new_tokens,
    )


# -- the cached run ---------------------------------------------------------------------------


class GenerationStats(BaseModel):
    """What a run did: how many dialogues came from the cache, how many were generated, how
    fast."""

    dialogues: int = 0
    cached: int = 0
    generated: int = 0
    new_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def dialogues_per_minute(self) -> float:
        return 60 * self.generated / self.seconds if self.seconds > 0 else 0.0


def run_generation(
    model,
    tokenizer,
    jobs: Sequence[GenerationJob],
    spec: GenerationSpec,
    cache: GenerationCache,
    policy_fingerprint: str,
    script: DoctorScript | None,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[list[GeneratedDialogue], GenerationStats]:
    """Every job's dialogue, from the cache or generated in batches and committed one by one.

    ``model`` and ``tokenizer`` may be ``None`` when every job is cached. Returns the dialogues
    in job order and the run's stats.
    """
    stored = cache.get_many(job.key for job in jobs)
    pending = [job for job in jobs if job.key not in stored]
    stats = GenerationStats(dialogues=len(jobs), cached=len(jobs) - len(pending))
    done = stats.cached
    if on_progress:
        on_progress(done, len(jobs))
    if pending and model is None:
        raise ValueError(f"{len(pending)} dialogues are not cached and no model was given")
    run = uuid.uuid4().hex[:12]
    generate = roleplay_batch if spec.protocol == "roleplay" else whole_batch
    batch_size = spec.sampling.batch_size
    for start in range(0, len(pending), batch_size):
        batch = pending[start : start + batch_size]
        started = time.perf_counter()
        results = generate(model, tokenizer, batch, spec)
        elapsed = time.perf_counter() - started
        for job, result in zip(batch, results, strict=True):
            item = result.model_copy(update={"seconds": elapsed / len(batch), "run": run})
            cache.put(
                job.key,
                item,
                policy=policy_fingerprint,
                protocol=spec.protocol,
                doctor_script=script.fingerprint if script and spec.protocol == "roleplay" else "",
                persona_id=job.persona.persona_id,
                seed=spec.seed,
                sample_index=job.sample_index,
                settings=spec.cache_settings(),
            )
            stored[job.key] = item
            stats.generated += 1
            stats.new_tokens += item.new_tokens
        stats.seconds += elapsed
        done += len(batch)
        if on_progress:
            on_progress(done, len(jobs))
    return [stored[job.key] for job in jobs], stats


# -- the table --------------------------------------------------------------------------------


def dialogue_id(persona_id: str, checkpoint: str, seed: int, sample_index: int) -> str:
    return f"{persona_id}-{checkpoint}-s{seed}-{sample_index}"


def dialogue_table(
    jobs: Sequence[GenerationJob],
    dialogues: Sequence[GeneratedDialogue],
    spec: GenerationSpec,
    model_name: str,
    checkpoint: str,
    epoch: int,
    script: DoctorScript | None,
    rules: DegenerateRules | None = None,
) -> pd.DataFrame:
    """The generated-dialogues table (:data:`DIALOGUE_COLUMNS`), degeneracy judged now."""
    rows = []
    for job, item in zip(jobs, dialogues, strict=True):
        pid = job.persona.persona_id
        rows.append(
            {
                "dialogue_id": dialogue_id(pid, checkpoint, spec.seed, job.sample_index),
                "persona_id": pid,
                "prompt_id": pid,
                "model": model_name,
                "checkpoint": checkpoint,
                "epoch": epoch,
                "seed": spec.seed,
                "sample_index": job.sample_index,
                "protocol": spec.protocol,
                "doctor_script": script.fingerprint if spec.protocol == "roleplay" else "",
                "system_prompt": job.system,
                "dialogue": item.dialogue,
                "n_turns": len(item.patient_turns),
                "patient_words": len(" ".join(item.patient_turns).split()),
                "degenerate": degenerate_reason(item.patient_turns, item.issues, rules),
            }
        )
    return pd.DataFrame(rows, columns=list(DIALOGUE_COLUMNS))


def degenerate_counts(table: pd.DataFrame) -> dict[str, int]:
    """Dialogues per degenerate reason (every reason listed, zeros included)."""
    counts = table["degenerate"].fillna("").value_counts()
    return {reason: int(counts.get(reason, 0)) for reason in DEGENERATE_REASONS}
