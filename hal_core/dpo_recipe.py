"""The DPO recipe contract: what a recipe of infra/recipes/dpo/ may hold and how it is checked.

A recipe is read by ``TrlParser`` into three settings classes: TRL's ``DPOConfig`` and
``ModelConfig``, and :class:`HalArguments` for what those lack. Keys are checked by name, type
and range before anything is loaded, so a bad recipe fails in seconds, naming the recipe file,
the key and the rule. ``hal align`` runs that check (``--check_only``) before it reads any data;
the training script runs it again as its first step.
"""

from __future__ import annotations

import argparse
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hal_core.tiny_model import TINY_MODEL_NAME
from hal_core.training import PARENT_RUN_ENV

KEY_RULE = "rule: a field of TRL's DPOConfig or ModelConfig, or of HalArguments"


def option(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class HalArguments:
    """What TRL's dataclasses lack: our pairs, their chat shape, resume and MLflow nesting."""

    dataset_path: str | None = option(None, "DatasetDict folder with prompt/chosen/rejected.")
    train_split: str = option("train", "Split to train on.")
    eval_split: str = option("test", "Held-out pairs for eval curves.")
    chat_format: str = option(
        "single_turn",
        "single_turn: prompt = user message, chosen/rejected = assistant messages; roleplay: "
        "prompt = system message, chosen/rejected = D:/P: transcripts (P = assistant); none.",
        choices=["single_turn", "roleplay", "none"],
    )
    max_prompt_length: int | None = option(None, "Cut prompts to their first N tokens.")
    max_train_samples: int | None = option(None, "Train on the first N pairs only.")
    lora_last_layers: int | None = option(
        None,
        "LoRA on the last N decoder layers only: backward stops below them, so a step costs "
        "less (CPU); None = every layer.",
    )
    fresh_start: bool = option(False, "Delete checkpoints in output_dir instead of resuming.")
    mlflow_parent_run_id: str | None = option(None, f"Parent run (default: ${PARENT_RUN_ENV}).")
    mlflow_experiment: str = option("hal-alignment", "Experiment of a run without a parent.")
    check_only: bool = option(
        False,
        "Check the recipe's keys, types and ranges, print the settings and exit. The inputs "
        "`hal align` fills later may be pending: no dataset_path, and hal-tiny-llama (built "
        "by `hal align`) as the model.",
    )

    def __post_init__(self) -> None:
        if not self.dataset_path and not self.check_only:
            raise ValueError("missing required key 'dataset_path' (a DatasetDict folder)")
        self.mlflow_parent_run_id = self.mlflow_parent_run_id or os.environ.get(PARENT_RUN_ENV)


def read_recipe(path: str | Path) -> dict[str, Any]:
    """A recipe file's keys; fails naming the file when it is missing or not a YAML mapping."""
    try:
        values = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"recipe {path}: cannot be read ({error})") from error
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"recipe {path}: not a YAML mapping of keys to values")
    return values


def recipe_sources(arguments: list[str]) -> dict[str, str]:
    """Where each key given in ``arguments`` comes from: the recipe file or an override of it."""
    recipe = arguments[arguments.index("--config") + 1] if "--config" in arguments else None
    sources = dict.fromkeys(read_recipe(recipe), f"recipe {recipe}") if recipe else {}
    override = f"override --{{key}} of recipe {recipe}" if recipe else "command line --{key}"
    for argument in arguments:
        if argument.startswith("--") and argument != "--config":
            key = argument[2:].split("=")[0]
            sources[key] = override.format(key=key)
    return sources


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def range_violations(hal: HalArguments, training, model) -> list[tuple[str, Any, str]]:
    """(key, value, rule) for each parsed setting outside its range."""
    checks = [
        ("learning_rate", training.learning_rate, _positive(training.learning_rate), "> 0"),
        ("beta", training.beta, _positive(training.beta), "> 0"),
        (
            "num_train_epochs",
            training.num_train_epochs,
            _positive(training.num_train_epochs) or _positive(training.max_steps),
            "> 0 unless max_steps > 0",
        ),
        (
            "per_device_train_batch_size",
            training.per_device_train_batch_size,
            _count(training.per_device_train_batch_size),
            "an integer >= 1",
        ),
        ("lora_r", model.lora_r, not model.use_peft or _count(model.lora_r), "an integer >= 1"),
    ]
    for key in ("lora_last_layers", "max_train_samples"):
        value = getattr(hal, key)
        checks.append((key, value, value is None or _count(value), "null or an integer >= 1"))
    return [(key, value, rule) for key, value, ok, rule in checks if not ok]


def parse_recipe(arguments: list[str]):
    """(hal, training, model) settings from ``--config`` + overrides, checked before loading."""
    import torch
    from trl import DPOConfig, ModelConfig, TrlParser

    parser = TrlParser((HalArguments, DPOConfig, ModelConfig), exit_on_error=False)
    sources = recipe_sources(arguments)
    check_keys(parser, sources)
    cuda = torch.cuda.is_available()
    automatic = {"report_to": ["mlflow"], "bf16": bool(cuda and torch.cuda.is_bf16_supported())}
    if "LOCAL_RANK" in os.environ and not cuda:  # DeepSpeed on CPU ranks talks through gloo
        automatic["ddp_backend"] = "gloo"
    parser.set_defaults(**automatic)
    where = arguments[arguments.index("--config") + 1] if "--config" in arguments else "args"
    try:
        hal, training, model = parser.parse_args_and_config(arguments)
    except (ValueError, TypeError, argparse.ArgumentError) as error:
        raise ValueError(f"recipe {where}: {error}") from error
    for key, value, rule in range_violations(hal, training, model):
        origin = sources.get(key, f"recipe {where} (default)")
        raise ValueError(f"{origin}: key '{key}' = {value!r} is out of range (rule: {rule})")
    model_origin = sources.get("model_name_or_path", f"recipe {where}")
    if model.model_name_or_path is None:
        raise ValueError(f"{model_origin}: missing required key 'model_name_or_path'")
    if model.model_name_or_path == TINY_MODEL_NAME and not hal.check_only:
        raise ValueError(
            f"{model_origin}: key 'model_name_or_path' is {TINY_MODEL_NAME!r}: pass a model "
            "folder or hub id (`hal align` builds or converts the recipe's model and passes its "
            "folder)"
        )
    if (model.load_in_4bit or model.load_in_8bit) and not cuda:
        raise ValueError(
            f"recipe {where}: key 'load_in_4bit'/'load_in_8bit' (QLoRA) needs a CUDA GPU"
        )
    return hal, training, model


def check_keys(parser, sources: dict[str, str]) -> None:
    """Fail on a key no settings class knows, naming where it came from and the closest key."""
    known = {action.dest for action in parser._actions} | {"config"}
    for key, where in sources.items():
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"{where}: unknown key '{key}'{hint}; {KEY_RULE}")
