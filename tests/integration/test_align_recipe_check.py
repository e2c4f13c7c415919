"""`hal align` checks its DPO recipe before it reads any data or prepares any model.

Every input of the flow points at a path that does not exist, so reading any of them first
would fail with a missing-file error instead of the recipe's; a good recipe shows that the
missing inputs are then the first thing to fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from flows.align import AlignParams, align, recipe_path
from hal_cli.commands import app
from tasks.training import RecipeRejectedError

pytestmark = pytest.mark.integration

TINY_RECIPE = recipe_path("tiny-cpu")


def missing_inputs(folder: Path) -> dict[str, str]:
    """Align inputs that would each fail to load: none of these paths exists."""
    return {
        "candidates_file": str(folder / "missing" / "candidates.csv"),
        "prompts_file": str(folder / "missing" / "prompts.csv"),
        "ratings_file": str(folder / "missing" / "ratings.csv"),
        "reward_file": str(folder / "missing" / "reward.json"),
        "model_name_or_path": str(folder / "missing" / "model"),
    }


def tiny_recipe_with(folder: Path, name: str, old: str, new: str) -> Path:
    """The tiny-cpu recipe with one line replaced, written to ``folder/name``."""
    text = TINY_RECIPE.read_text()
    assert old in text
    path = folder / name
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "learning_rate: 1.0e-3",
            "learning_rate: -1.0e-3",
            r"key 'learning_rate' = -0.001 is out of range \(rule: > 0\)",
        ),
        (
            "learning_rate: 1.0e-3",
            "lerning_rate: 1.0e-3",
            r"unknown key 'lerning_rate' \(did you mean 'learning_rate'\?\); rule: a field of",
        ),
    ],
    ids=["negative-learning-rate", "misspelled-key"],
)
def test_bad_recipe_fails_align_before_any_input_is_read(settings, tmp_path, old, new, expected):
    recipe = tiny_recipe_with(tmp_path, "bad.yaml", old, new)
    params = AlignParams(recipe=str(recipe), **missing_inputs(tmp_path))
    with pytest.raises(RecipeRejectedError, match=rf"recipe {recipe}: {expected}"):
        align(params)


def test_good_recipe_passes_the_check_and_the_missing_inputs_fail_next(settings, tmp_path):
    params = AlignParams(recipe=str(TINY_RECIPE), **missing_inputs(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"missing/candidates\.csv"):
        align(params)


def test_hal_align_rejects_a_bad_override_before_reading_ratings(settings, tmp_path):
    inputs = missing_inputs(tmp_path)
    invocation = CliRunner().invoke(
        app,
        [
            "align",
            "--ratings-file", inputs["ratings_file"],
            "--set", f"candidates_file={inputs['candidates_file']}",
            "--set", "recipe_overrides.learning_rate=-0.001",
            "--accelerate-config", "single",
            "--num-processes", "1",
        ],
    )  # fmt: skip
    assert invocation.exit_code == 1
    error = invocation.output.strip().splitlines()[-1]
    assert error == (
        f"Error: RecipeRejectedError: recipe error: override --learning_rate of recipe "
        f"{TINY_RECIPE}: key 'learning_rate' = -0.001 is out of range (rule: > 0)"
    )
