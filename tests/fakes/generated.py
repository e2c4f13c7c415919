"""Crafted generated-dialogue tables (the generate stage's contract) for evaluation tests.

Twelve personas, each a doctor's visit with three patient turns: ``formal`` replies are long
and stilted, ``casual`` ones shorter (about 0.7 times the words per turn), lowercase, with
slang and hedges, which human-likeness judges rate higher.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from hal_core.dialogue import SpeakerTags, parse_dialogue

SYMPTOMS: tuple[tuple[str, str, str], ...] = (
    ("headaches", "bright light", "two weeks"),
    ("a cough", "cold air", "ten days"),
    ("back pain", "sitting", "a month"),
    ("stomach cramps", "eating", "three days"),
    ("dizziness", "standing up", "a week"),
    ("a rash", "the heat", "five days"),
    ("knee pain", "the stairs", "two months"),
    ("fatigue", "poor sleep", "three weeks"),
    ("a sore throat", "swallowing", "four days"),
    ("heartburn", "lying down", "a fortnight"),
    ("ear pain", "loud noise", "six days"),
    ("wrist pain", "typing", "a month"),
)
PERSONAS = tuple(f"persona-{k:02d}" for k in range(len(SYMPTOMS)))
DOCTOR = (
    "D: Good morning, what brings you in today?",
    "D: Anything else you have noticed?",
    "D: Let me examine you.",
)


def formal(symptom: tuple[str, str, str]) -> str:
    what, trigger, since = symptom
    patient = (
        f"P: Good morning, Doctor. I have been experiencing {what} for approximately {since}, "
        "and I would appreciate your professional assessment of the situation.",
        f"P: Additionally, I have noticed that it seems to be affected by {trigger}. I would "
        "like to understand the possible causes and the appropriate course of treatment.",
        "P: Thank you very much for your time and attention, Doctor. I greatly appreciate your "
        f"thoroughness regarding the {what}.",
    )
    return "\n".join(line for pair in zip(DOCTOR, patient, strict=True) for line in pair)


def casual(symptom: tuple[str, str, str]) -> str:
    what, trigger, since = symptom
    patient = (
        f"P: hey doc.. honestly the {what} is killing me lol, been like {since} now and its "
        "not getting better",
        f"P: yeah {trigger} kinda makes it worse?? idk, its weird and kinda annoying tbh",
        f"P: ok cool thanks, appreciate it. hope its nothing serious with the {what} haha",
    )
    return "\n".join(line for pair in zip(DOCTOR, patient, strict=True) for line in pair)


def generated_table(
    epoch: int,
    dialogues: Sequence[tuple[str, str]],
    model: str = "tiny-base",
    degenerate: Mapping[int, str] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """One checkpoint's table: ``dialogues`` are (persona id, text) pairs; ``degenerate`` maps
    row positions to a reason. Samples of one persona are numbered in order."""
    checkpoint = "base" if epoch == 0 else f"epoch-{epoch}"
    degenerate = degenerate or {}
    rows, samples = [], {}
    tags = SpeakerTags.doctor_visit()
    for position, (persona, text) in enumerate(dialogues):
        index = samples[persona] = samples.get(persona, -1) + 1
        turns = parse_dialogue(text, tags).rated_texts
        rows.append(
            {
                "dialogue_id": f"{persona}-{checkpoint}-s{seed}-{index}",
                "persona_id": persona,
                "prompt_id": persona,
                "model": model,
                "checkpoint": checkpoint,
                "epoch": epoch,
                "seed": seed,
                "sample_index": index,
                "protocol": "roleplay",
                "doctor_script": "v1",
                "dialogue": text,
                "n_turns": len(turns),
                "patient_words": sum(len(turn.split()) for turn in turns),
                "degenerate": degenerate.get(position, ""),
            }
        )
    return pd.DataFrame(rows)


def write_policy_tables(folder: Path) -> list[Path]:
    """Epoch 0 formal, epoch 1 casual for every persona, plus one degenerate epoch-1 sample."""
    folder.mkdir(parents=True, exist_ok=True)
    base = generated_table(0, [(p, formal(s)) for p, s in zip(PERSONAS, SYMPTOMS, strict=True)])
    aligned = [(p, casual(s)) for p, s in zip(PERSONAS, SYMPTOMS, strict=True)]
    aligned.append((PERSONAS[0], "P: ok ok ok\nP: ok ok ok\nP: ok ok ok"))
    trained = generated_table(1, aligned, degenerate={len(aligned) - 1: "repeated_lines"})
    paths = [folder / "generated-base.csv", folder / "generated-epoch-1.csv"]
    base.to_csv(paths[0], index=False)
    trained.to_csv(paths[1], index=False)
    return paths
