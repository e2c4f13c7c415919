"""`hal <stage> --recipe`: a recipe names only what differs from the defaults, nested too."""

from __future__ import annotations

import pytest

from hal_cli.commands import STAGE_COMMANDS, build_params, stage_values
from hal_core.recipes import overlay


def spec(name: str):
    return next(command for command in STAGE_COMMANDS if command.name == name)


def test_a_nested_section_keeps_the_defaults_it_does_not_name(tmp_path):
    recipe = tmp_path / "pipeline.yaml"
    recipe.write_text("generate:\n  persona_limit: 40\ngenerate_test:\n  persona_limit: 32\n")
    params = build_params(spec("pipeline"), stage_values(spec("pipeline"), str(recipe), (), {}))
    # the pipeline's own defaults for the two generate sections survive: other prompt files
    assert params.generate.prompts_file == "synthlabs/prompts_train.csv"
    assert params.generate.samples_per_persona == 4 and params.generate.persona_limit == 40
    assert params.generate_test.prompts_file == "synthlabs/prompts_test.csv"
    assert params.generate_test.persona_limit == 32


def test_a_judge_of_another_backend_replaces_the_default_judge():
    defaults = {"judge": {"backend": "openai", "model": "gpt-5-mini", "concurrency": 8}}
    chosen = overlay(defaults, {"judge": {"backend": "local", "model_path": "/j"}})
    assert chosen == {"judge": {"backend": "local", "model_path": "/j"}}
    same = overlay(defaults, {"judge": {"concurrency": 2}})
    assert same["judge"] == {"backend": "openai", "model": "gpt-5-mini", "concurrency": 2}


def test_an_unknown_key_in_a_nested_section_is_still_refused(tmp_path):
    import click

    with pytest.raises(click.UsageError, match=r"generate\.persona_limt"):
        build_params(spec("pipeline"), {"generate": {"persona_limt": 3}})
