"""Persona prompts read into name, biography, condition and reason; the compact role-play card."""

from __future__ import annotations

import pandas as pd
import pytest

from hal_core.personas import CardSettings, load_persona_prompts, persona_card
from hal_core.tables import TableError


@pytest.fixture(scope="module")
def train_personas(data_dir):
    return load_persona_prompts(data_dir / "synthlabs" / "prompts_train.csv")


def test_every_real_prompt_yields_a_name_condition_and_reason(data_dir, train_personas):
    test = load_persona_prompts(data_dir / "synthlabs" / "prompts_test.csv")
    assert len(train_personas) == 1800 and len(test) == 200
    confirmed = 0
    for persona in [*train_personas, *test]:
        assert persona.name in persona.biography, persona.persona_id
        assert persona.condition and persona.reason and persona.biography
        # The reason for the visit calls the patient by name, or the biography repeats it
        # (one prompt shortens Douglas to Doug).
        confirmed += persona.first_name in persona.reason or (
            persona.biography.count(persona.first_name) >= 2
        )
    assert confirmed >= 1995
    first = train_personas[0]
    assert (first.persona_id, first.name, first.condition) == (
        "0",
        "Marcela Soto",
        "Migraine headaches",
    )


def test_a_name_that_is_not_the_biographys_first_words_is_found(train_personas):
    born = next(p for p in train_personas if p.biography.startswith("Born and raised"))
    assert born.name == "Darlene Holloway"


def test_cards_are_compact_and_say_who_why_and_what(train_personas):
    sizes = []
    for persona in train_personas:
        card = persona_card(persona)
        sizes.append(len(card.split()))
        assert card.startswith(f"You are {persona.name}, a patient")
        assert f"Your condition: {persona.condition.rstrip('.')}." in card
    # ~115 SmolLM2 tokens on average (measured); words are a tokenizer-free proxy.
    assert 60 <= sum(sizes) / len(sizes) <= 100 and max(sizes) <= 115
    longer = persona_card(train_personas[0], CardSettings(biography_words=80, reason_words=60))
    assert len(longer.split()) > len(persona_card(train_personas[0]).split())


def test_named_ids_come_in_the_order_asked_and_unknown_ids_are_an_error(data_dir):
    path = data_dir / "synthlabs" / "prompts_test.csv"
    picked = load_persona_prompts(path, persona_ids=["7", "3"])
    assert [p.persona_id for p in picked] == ["7", "3"]
    assert [p.persona_id for p in load_persona_prompts(path, limit=3)] == ["0", "1", "2"]
    with pytest.raises(TableError, match="no persona_id"):
        load_persona_prompts(path, persona_ids=["100000"])


def test_a_prompt_without_its_fields_is_an_error_naming_the_file_and_row(tmp_path):
    path = tmp_path / "prompts.csv"
    pd.DataFrame(
        {
            "persona_id": [1, 2],
            "prompt": [
                "Biography: Ana Lima is 30.\nMedical condition: flu\n"
                "Reason for clinical visit: Ana has a fever.",
                "Write a dialogue about someone.",
            ],
        }
    ).to_csv(path, index=False)
    with pytest.raises(TableError, match=r"prompts\.csv row 2: .*rule"):
        load_persona_prompts(path)
    (ana,) = load_persona_prompts(path, limit=1)
    assert (ana.name, ana.condition, ana.reason) == ("Ana Lima", "flu", "Ana has a fever.")
