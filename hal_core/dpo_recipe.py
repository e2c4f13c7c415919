"""The DPO recipe contract: what a recipe of infra/recipes/dpo/ may hold and how it is checked.

A recipe is read by ``TrlParser`` into three settings classes: TRL's ``DPOConfig`` and
``ModelConfig``, and :class:`HalArguments` for what those lack. Keys are checked by name, type
and range before anything is loaded, so a bad recipe fails in seconds, naming the key.
"""

from __future__ import annotations

import argparse
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hal_core.tiny_model import TINY_MODEL_NAME
from hal_core.training import PARENT_RUN_ENV


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
    check_only: bool = option(False, "Validate the recipe, print the settings and exit.")

    def __post_init__(self) -> None:
        if not self.dataset_path:
            raise ValueError("missing required key 'dataset_path' (a DatasetDict folder)")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"key 'max_train_samples' must be >= 1, got {self.max_train_samples}")
        self.mlflow_parent_run_id = self.mlflow_parent_run_id or os.environ.get(PARENT_RUN_ENV)


def parse_recipe(arguments: list[str]):
    """(hal, training, model) settings from ``--config`` + overrides, checked before loading."""
    import torch
    from trl import DPOConfig, ModelConfig, TrlParser

    parser = TrlParser((HalArguments, DPOConfig, ModelConfig), exit_on_error=False)
    check_keys(parser, arguments)
    cuda = torch.cuda.is_available()
    automatic = {"report_to": ["mlflow"], "bf16": bool(cuda and torch.cuda.is_bf16_supported())}
    if "LOCAL_RANK" in os.environ and not cuda:  # DeepSpeed on CPU ranks talks through gloo
        automatic["ddp_backend"] = "gloo"
    parser.set_defaults(**automatic)
    try:
        hal, training, model = parser.parse_args_and_config(arguments)
    except (ValueError, argparse.ArgumentError) as error:
        where = arguments[arguments.index("--config") + 1] if "--config" in arguments else "args"
        raise ValueError(f"recipe {where}: {error}") from error
    checks = {
        "learning_rate": training.learning_rate > 0,
        "beta": training.beta > 0,
        "num_train_epochs": training.num_train_epochs > 0 or training.max_steps > 0,
        "per_device_train_batch_size": training.per_device_train_batch_size >= 1,
        "lora_r": not model.use_peft or model.lora_r >= 1,
        "lora_last_layers": hal.lora_last_layers is None or hal.lora_last_layers >= 1,
    }
    for key, ok in checks.items():
        if not ok:
            value = getattr(training, key, getattr(model, key, None))
            raise ValueError(f"key '{key}' = {value!r} is out of range (must be positive)")
    if model.model_name_or_path in (None, TINY_MODEL_NAME):
        raise ValueError(
            f"key 'model_name_or_path' is {model.model_name_or_path!r}: pass a model folder or "
            "hub id (`hal align` builds or converts the recipe's model and passes its folder)"
        )
    if (model.load_in_4bit or model.load_in_8bit) and not cuda:
        raise ValueError("key 'load_in_4bit'/'load_in_8bit' (QLoRA) needs a CUDA GPU")
    return hal, training, model


def check_keys(parser, arguments: list[str]) -> None:
    """Fail on a key no settings class knows, naming where it came from and the closest key."""
    known = {action.dest for action in parser._actions} | {"config"}
    given = {arg[2:].split("=")[0]: "command line" for arg in arguments if arg.startswith("--")}
    if "--config" in arguments:
        recipe = arguments[arguments.index("--config") + 1]
        given |= dict.fromkeys(yaml.safe_load(Path(recipe).read_text()) or {}, f"recipe {recipe}")
    for key, where in given.items():
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"{where}: unknown key '{key}'{hint}")
