"""What a persona prompts file must hold before anything is generated from it (issue 24, rows 7
and 8): at least one prompt row, a non-empty selection, and prompts of a bounded length, which
are refused when longer rather than cut into a card that plays another persona."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from hal_core.personas import MAX_PROMPT_CHARS, load_persona_prompts, persona_card
from hal_core.tables import TableError


def prompt(name: str, biography_words: int = 12) -> str:
    filler = " ".join(["quietly"] * biography_words)
    return (
        f"<input_data>\nBiography: {name} is a baker who lives {filler} near the sea. {name} "
        f"likes mornings.\nMedical condition: Asthma\nReason for clinical visit: {name} has "
        "been wheezing at night.\n</input_data>"
    )


def write(path: Path, prompts: list[str]) -> Path:
    pd.DataFrame({"persona_id": range(len(prompts)), "prompt": prompts}).to_csv(path, index=False)
    return path


def test_a_header_only_file_is_refused_naming_the_file_and_the_rule(tmp_path: Path) -> None:
    path = tmp_path / "prompts.csv"
    path.write_text("persona_id,prompt\n", encoding="utf-8")
    with pytest.raises(TableError) as caught:
        load_persona_prompts(path)
    assert str(caught.value) == (
        f"{path}: no prompt rows under the header (rule: at least one prompt row)"
    )


def test_an_empty_selection_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "prompts.csv", [prompt("Ann Lee")])
    with pytest.raises(TableError, match=r"persona_ids is empty \(rule: name at least one"):
        load_persona_prompts(path, persona_ids=[])
    with pytest.raises(ValueError, match=r"limit 0 selects no prompt"):
        load_persona_prompts(path, limit=0)


def test_an_over_long_prompt_is_refused_with_file_row_column_and_limit(tmp_path: Path) -> None:
    long = prompt("Bo Park", biography_words=20_000)  # about 160,000 characters
    path = write(tmp_path / "prompts.csv", [prompt("Ann Lee"), long])
    with pytest.raises(TableError) as caught:
        load_persona_prompts(path)
    message = str(caught.value)
    assert message.startswith(f"{path} column 'prompt': row 2 (persona_id 1) has {len(long):,}")
    assert f"at most {MAX_PROMPT_CHARS:,} characters" in message and "not cut" in message
    # Rows that are not selected are not read: the first prompt alone is fine.
    assert [p.name for p in load_persona_prompts(path, limit=1)] == ["Ann Lee"]


def test_the_limit_is_a_setting_and_a_prompt_at_it_is_accepted(tmp_path: Path) -> None:
    text = prompt("Ann Lee", biography_words=40)
    path = write(tmp_path / "prompts.csv", [text])
    (persona,) = load_persona_prompts(path, max_chars=len(text))
    card = persona_card(persona)
    assert card.startswith("You are Ann Lee, a patient") and "Asthma" in card
    with pytest.raises(TableError, match=f"at most {len(text) - 1:,} characters"):
        load_persona_prompts(path, max_chars=len(text) - 1)


def test_every_real_prompt_is_well_under_the_limit(data_dir: Path) -> None:
    for name in ("prompts_train.csv", "prompts_test.csv"):
        table = pd.read_csv(data_dir / "synthlabs" / name)
        assert table["prompt"].str.len().max() < MAX_PROMPT_CHARS / 2
