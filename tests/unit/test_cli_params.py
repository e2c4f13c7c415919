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


def test_rate_judge_is_a_preset_name_or_a_config_file_and_defaults_to_the_local_judge(tmp_path):
    from hal_core.judges import LocalJudgeConfig
    from hal_core.judges.presets import JUDGES_DIR

    rate = spec("rate")
    default = build_params(rate, stage_values(rate, None, (), {"input_file": "d.csv"}))
    assert isinstance(default.judge, LocalJudgeConfig)
    assert default.model_dump(mode="json")["judge"] == "local"  # stored by name
    named = build_params(
        rate, stage_values(rate, None, (), {"judge": "vllm-local"}) | {"input_file": "d.csv"}
    )
    assert named.judge.base_url == "http://127.0.0.1:8000/v1"
    config = tmp_path / "judge.yaml"
    config.write_text("backend: openai\nmodel: my-model\n")
    from_file = build_params(
        rate, stage_values(rate, None, (), {"judge": str(config)}) | {"input_file": "d.csv"}
    )
    assert from_file.judge.model == "my-model"
    shipped = build_params(
        rate,
        stage_values(
            rate, None, (), {"judge": str(JUDGES_DIR / "openai-gpt-5.yaml"), "input_file": "d.csv"}
        ),
    )
    assert shipped.model_dump(mode="json")["judge"] == "openai-gpt-5"  # same config as the preset
    options = build_params(rate, stage_values(rate, None, (), {"model": "m", "input_file": "d"}))
    assert options.judge.backend == "openai" and options.judge.model == "m"


def test_an_unknown_judge_preset_names_the_presets():
    import click

    rate = spec("rate")
    with pytest.raises(click.UsageError, match="presets: local, "):
        build_params(rate, {"input_file": "d.csv", "judge": "gpt-99"})
