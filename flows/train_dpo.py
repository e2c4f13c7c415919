"""DPO training entry point: a YAML recipe in, a LoRA policy tracked in MLflow out.

Started by ``accelerate launch`` (the ``align`` flow does it through ``tasks/training.py``);
never imported by the flow process, and independent of ``hal_core``. ``main()`` is a
checklist in a fixed order: recipe, seed, logging, resume, model, data, train, save, log.

Run from the project root (relative paths in recipes are relative to it)::

    # check a recipe without training: prints the resolved settings, fails naming a bad key
    python flows/train_dpo.py --config infra/recipes/dpo/tiny-cpu.yaml \\
        --model_name_or_path .hal/models/hal-tiny-llama-<hash> --dataset_path <pairs> --check_only

    # the tiny model on this CPU, 2 processes with DeepSpeed ZeRO-2 (gloo)
    accelerate launch --config_file infra/accelerate/zero2.yaml --num_processes 2 \\
        flows/train_dpo.py --config infra/recipes/dpo/tiny-cpu.yaml \\
        --model_name_or_path .hal/models/hal-tiny-llama-<hash> --dataset_path <pairs> \\
        --output_dir .hal/training/tiny

    # Llama-3.2-1B-Instruct as in the paper (4-bit QLoRA, one GPU)
    accelerate launch --config_file infra/accelerate/single.yaml \\
        flows/train_dpo.py --config infra/recipes/dpo/llama-3.2-1b-qlora-paper.yaml \\
        --dataset_path <pairs>

    # bf16 LoRA tuned for throughput, 8 GPUs with ZeRO-3
    accelerate launch --config_file infra/accelerate/zero3.yaml --num_processes 8 \\
        flows/train_dpo.py --config infra/recipes/dpo/llama-3.2-1b-lora-fast.yaml \\
        --dataset_path <pairs>

``<pairs>`` is a ``DatasetDict`` saved by the ``align`` flow (``hal align`` prints it). Any key
of the recipe can be overridden on the command line (``--learning_rate 1e-5``). MLflow: the
run is a child of ``--mlflow_parent_run_id`` (or env ``HAL_MLFLOW_PARENT_RUN_ID``) in the store
``MLFLOW_TRACKING_URI`` points at; only the main process logs.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import enum
import json
import logging
import os
import re
import shutil
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger("train_dpo")

PARENT_RUN_ENV = "HAL_MLFLOW_PARENT_RUN_ID"
TINY_MODEL_NAME = "hal-tiny-llama"
"""Placeholder the align flow swaps for the built tiny model's folder (see hal_core.tiny_model)."""
RUN_RECORD = "hal_mlflow_run.json"
"""Written into ``output_dir``: the MLflow run a resumed training keeps logging to."""
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
CHECKPOINT_ARTIFACT_FILES = re.compile(
    r"^(adapter_model\.safetensors|adapter_config\.json|tokenizer.*|special_tokens_map\.json|"
    r"chat_template\.jinja|trainer_state\.json|model.*\.safetensors|config\.json|"
    r"generation_config\.json)$"
)


@dataclass
class DataArguments:
    """Where the preference pairs are and how held-out prompts are sampled each epoch."""

    dataset_path: str | None = field(
        default=None,
        metadata={"help": "Folder of a DatasetDict (save_to_disk) with prompt/chosen/rejected."},
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    test_split: str = field(
        default="test", metadata={"help": "Split whose prompts are held out for sampling."}
    )
    chat_format: bool = field(
        default=True,
        metadata={
            "help": "Wrap prompt/chosen/rejected as user/assistant messages when the tokenizer "
            "has a chat template (as the paper trained Llama-3.2-1B-Instruct)."
        },
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={"help": "Cut prompt texts to this many tokens (their start is kept)."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on the first N pairs only (smoke runs)."}
    )
    sample_prompts: int = field(
        default=100,
        metadata={"help": "Held-out prompts answered after each epoch (0 = no sampling)."},
    )
    sample_at_start: bool = field(
        default=True, metadata={"help": "Also answer them before training (epoch 0, the base)."}
    )
    sample_max_new_tokens: int = field(
        default=1024, metadata={"help": "Length limit of a sampled response."}
    )
    sample_temperature: float = field(
        default=0.7, metadata={"help": "Sampling temperature; 0 = greedy."}
    )
    sample_top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling mass."})
    sample_batch_size: int = field(default=8, metadata={"help": "Prompts per generate call."})


@dataclass
class RunArguments:
    """Resume behaviour and what goes to MLflow."""

    fresh_start: bool = field(
        default=False,
        metadata={"help": "Ignore and delete checkpoints in output_dir instead of resuming."},
    )
    mlflow_parent_run_id: str | None = field(
        default=None,
        metadata={"help": f"Parent MLflow run (default: env {PARENT_RUN_ENV}); None = top level."},
    )
    mlflow_experiment: str = field(
        default="hal-alignment",
        metadata={"help": "Experiment of a run without a parent."},
    )
    mlflow_run_name: str = field(default="train_dpo", metadata={"help": "MLflow run name."})
    log_checkpoints: bool = field(
        default=True, metadata={"help": "Log each checkpoint's adapter + tokenizer."}
    )
    log_final_model: bool = field(
        default=True,
        metadata={"help": "Log the merged final model with MLflow's transformers flavour."},
    )
    register_model_as: str | None = field(
        default="hal-policy", metadata={"help": "Registered model name (None = do not register)."}
    )
    check_parameter_changes: bool = field(
        default=True,
        metadata={"help": "Record which trainable and frozen parameters changed in training."},
    )
    check_only: bool = field(
        default=False,
        metadata={"help": "Validate the recipe, print the resolved settings and exit."},
    )


# --------------------------------------------------------------------------------------------
# Recipe parsing: YAML + command-line overrides -> typed dataclasses, or an error naming the key


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the file (or command line) and the key."""


@dataclass
class Recipe:
    model: Any
    data: DataArguments
    run: RunArguments
    training: Any
    sources: dict[str, str]


def _recipe_dataclasses() -> dict[str, type]:
    from trl import DPOConfig, ModelConfig

    return {"model": ModelConfig, "data": DataArguments, "run": RunArguments, "training": DPOConfig}


def _parse_overrides(arguments: list[str]) -> tuple[str | None, dict[str, Any]]:
    config_path = None
    values: dict[str, Any] = {}
    index = 0
    while index < len(arguments):
        token = arguments[index]
        if not token.startswith("--"):
            raise RecipeError(f"command line: expected --key value, got {token!r}")
        key, has_value, inline = token[2:].partition("=")
        key = key.replace("-", "_")
        if has_value:
            raw = inline
        elif index + 1 < len(arguments) and not arguments[index + 1].startswith("--"):
            index += 1
            raw = arguments[index]
        else:
            raw = "true"
        index += 1
        if key == "config":
            config_path = raw
            continue
        try:
            values[key] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            values[key] = raw
    return config_path, values


def _enum_values(annotation: Any) -> list[str] | None:
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [member.value for member in annotation]
    return None


def _coerce(value: Any, annotation: Any) -> tuple[bool, Any]:
    """(ok, value) with strings such as ``1e-5`` read as numbers where a number is expected."""
    if annotation is Any or annotation is typing.Any:
        return True, value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        enums = [values for option in options if (values := _enum_values(option))]
        if isinstance(value, str) and enums:
            allowed = [v for values in enums for v in values]
            return (value in allowed), value
        for option in options:
            ok, converted = _coerce(value, option)
            if ok:
                return True, converted
        return False, value
    if annotation is type(None):
        return value is None, value
    if origin is typing.Literal:
        return value in typing.get_args(annotation), value
    if origin in (list, tuple) or annotation in (list, tuple):
        items = value if isinstance(value, list | tuple) else [value]
        (item_type,) = typing.get_args(annotation)[:1] or (Any,)
        converted = []
        for item in items:
            ok, item = _coerce(item, item_type)
            if not ok:
                return False, value
            converted.append(item)
        return True, converted
    if origin is dict or annotation is dict:
        return isinstance(value, dict), value
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return True, int(value)
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        if isinstance(value, str):
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return isinstance(value, int | float) and not isinstance(value, bool), value
    if annotation is str:
        return isinstance(value, str), value
    if (allowed := _enum_values(annotation)) is not None:
        return (value in allowed or isinstance(value, annotation)), value
    return True, value


def _type_name(annotation: Any) -> str:
    return str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")


def check_recipe_keys(
    arguments: list[str],
) -> tuple[dict[str, dict[str, Any]], dict[str, str], str | None]:
    """Values per settings group from ``--config recipe.yaml`` plus ``--key value`` overrides.

    Every key must belong to a group and have the type its field declares; the model and the
    data must be given. Nothing is loaded, so this runs on any machine.
    """
    config_path, overrides = _parse_overrides(arguments)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise RecipeError(f"recipe {config_path}: file not found")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise RecipeError(f"recipe {config_path}: not valid YAML ({error})") from error
        if not isinstance(loaded, dict):
            raise RecipeError(f"recipe {config_path}: must be a mapping of keys to values")
        values.update(loaded)
        sources.update({key: f"recipe {config_path}" for key in loaded})
    values.update(overrides)
    sources.update({key: "command line" for key in overrides})

    groups = _recipe_dataclasses()
    owners: dict[str, str] = {}
    hints: dict[str, dict[str, Any]] = {}
    choices: dict[str, list] = {}
    for group, cls in groups.items():
        hints[group] = typing.get_type_hints(cls)
        for item in dataclasses.fields(cls):
            if item.init:
                owners.setdefault(item.name, group)
                if "choices" in item.metadata:
                    choices[item.name] = list(item.metadata["choices"])

    grouped: dict[str, dict[str, Any]] = {group: {} for group in groups}
    for key, value in values.items():
        where = sources.get(key, "recipe")
        if key not in owners:
            close = difflib.get_close_matches(key, list(owners), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise RecipeError(f"{where}: unknown key '{key}'{hint}")
        group = owners[key]
        annotation = hints[group][key]
        ok, converted = _coerce(value, annotation)
        if not ok:
            raise RecipeError(
                f"{where}: key '{key}' has {type(value).__name__} value {value!r}, "
                f"expected {_type_name(annotation)}"
            )
        if key in choices and converted not in choices[key]:
            raise RecipeError(
                f"{where}: key '{key}' is {converted!r}, expected one of {choices[key]}"
            )
        grouped[group][key] = converted

    if not grouped["model"].get("model_name_or_path"):
        raise RecipeError(
            f"{config_path or 'command line'}: missing required key 'model_name_or_path' "
            "(a hub id or a local model folder)"
        )
    if grouped["model"]["model_name_or_path"] == TINY_MODEL_NAME:
        raise RecipeError(
            f"{sources['model_name_or_path']}: key 'model_name_or_path' is {TINY_MODEL_NAME!r}, "
            "which `hal align` builds and replaces with its folder; pass that folder instead"
        )
    if not grouped["data"].get("dataset_path"):
        raise RecipeError(
            f"{config_path or 'command line'}: missing required key 'dataset_path' "
            "(a DatasetDict folder written by the align flow)"
        )
    if "output_dir" not in grouped["training"]:
        raise RecipeError(f"{config_path or 'command line'}: missing required key 'output_dir'")
    return grouped, sources, config_path


def parse_recipe(arguments: list[str]) -> Recipe:
    """Typed settings, checked for this machine (CUDA for QLoRA, bf16 support, the backend).

    Fails before anything is loaded when a key is unknown, a value has the wrong type, or the
    model or data is missing; the message names the key and where it came from.
    """
    grouped, sources, config_path = check_recipe_keys(arguments)
    groups = _recipe_dataclasses()
    training = grouped["training"]
    import torch

    cuda = torch.cuda.is_available()
    if grouped["model"].get("load_in_4bit") or grouped["model"].get("load_in_8bit"):
        key = "load_in_4bit" if grouped["model"].get("load_in_4bit") else "load_in_8bit"
        if not cuda:
            raise RecipeError(f"{sources[key]}: key '{key}' (QLoRA) needs a CUDA GPU")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as error:
            raise RecipeError(
                f"{sources[key]}: key '{key}' needs bitsandbytes (pip install '.[gpu]')"
            ) from error
    if "mlflow" in (training.get("report_to") or []) or training.get("report_to") == "mlflow":
        raise RecipeError(
            f"{sources['report_to']}: key 'report_to' must not include mlflow; this script logs "
            "to MLflow itself (as a child run)"
        )
    automatic = {}
    if "report_to" not in training:
        automatic["report_to"] = "none"
    if "bf16" not in training:
        automatic["bf16"] = bool(cuda and torch.cuda.is_bf16_supported())
    launched = "LOCAL_RANK" in os.environ
    if launched and not cuda and training.get("ddp_backend") is None:
        # Without GPUs accelerate leaves the backend unset under DeepSpeed and sees one
        # process; gloo makes it count the ranks DeepSpeed started.
        automatic["ddp_backend"] = "gloo"
    training.update(automatic)
    sources.update({key: "automatic" for key in automatic})

    try:
        instances = {group: cls(**grouped[group]) for group, cls in groups.items()}
    except (ValueError, TypeError) as error:
        raise RecipeError(f"{config_path or 'command line'}: invalid settings: {error}") from error
    run = instances["run"]
    if run.mlflow_parent_run_id is None:
        run.mlflow_parent_run_id = os.environ.get(PARENT_RUN_ENV) or None
    return Recipe(instances["model"], instances["data"], run, instances["training"], sources)


def resolved_settings(recipe: Recipe) -> dict[str, Any]:
    """Every explicitly set value, per group, as JSON-ready data."""
    chosen = {}
    for group in ("model", "data", "run", "training"):
        instance = getattr(recipe, group)
        defaults = type(instance)
        chosen[group] = {
            item.name: getattr(instance, item.name)
            for item in dataclasses.fields(defaults)
            if item.init and item.name in recipe.sources
        }
    return json.loads(json.dumps(chosen, default=str))


# --------------------------------------------------------------------------------------------
# Checkpoints and MLflow


def last_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest ``checkpoint-N`` whose trainer state was written (a killed save is skipped)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = []
    for child in folder.iterdir():
        match = CHECKPOINT_PATTERN.match(child.name)
        if match and child.is_dir() and (child / "trainer_state.json").is_file():
            found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


def close_unfinished_run(output_dir: Path) -> None:
    """Mark the run recorded in ``output_dir`` KILLED if it never finished (it is abandoned)."""
    from mlflow.tracking import MlflowClient

    record = output_dir / RUN_RECORD
    if record.is_file():
        client = MlflowClient()
        run_id = json.loads(record.read_text())["run_id"]
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "KILLED")


def open_mlflow_run(recipe: Recipe, output_dir: Path, resume: bool) -> str:
    """The child run to log to: the one recorded in ``output_dir`` when resuming, else a new one."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    record = output_dir / RUN_RECORD
    if record.is_file() and resume:
        run_id = json.loads(record.read_text())["run_id"]
        client.update_run(run_id, status="RUNNING")
        return run_id
    close_unfinished_run(output_dir)  # one stopped before its first checkpoint
    parent = recipe.run.mlflow_parent_run_id
    tags = {"hal.stage": "train_dpo"}
    if parent:
        experiment_id = client.get_run(parent).info.experiment_id
        tags["mlflow.parentRunId"] = parent
    else:
        experiment = client.get_experiment_by_name(recipe.run.mlflow_experiment)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else client.create_experiment(recipe.run.mlflow_experiment)
        )
    run = client.create_run(experiment_id, tags=tags, run_name=recipe.run.mlflow_run_name)
    output_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"run_id": run.info.run_id, "parent_run_id": parent}))
    return run.info.run_id


def _log_params(client, run_id: str, settings: dict[str, Any]) -> None:
    from mlflow.entities import Param

    existing = client.get_run(run_id).data.params
    params = []
    for group, values in settings.items():
        for key, value in values.items():
            name = f"{group}.{key}"
            text = value if isinstance(value, str) else json.dumps(value)
            if name not in existing:
                params.append(Param(name, text[:6000]))
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start : start + 100])


def _make_callbacks(
    recipe: Recipe, run_id: str | None, samples: list[dict], tokenizer, start_step: int
):
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient
    from transformers import TrainerCallback

    client = MlflowClient() if run_id else None

    class MlflowMetrics(TrainerCallback):
        """Every logging step's metrics (loss, rewards/*, logps/*, lr, grad norm) on rank 0."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or client is None or not logs:
                return
            stamp = int(time.time() * 1000)
            metrics = [
                Metric(key, float(value), stamp, state.global_step)
                for key, value in logs.items()
                if isinstance(value, int | float) and not isinstance(value, bool)
            ]
            if metrics:
                client.log_batch(run_id, metrics=metrics)

        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero or client is None:
                return
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if not recipe.run.log_checkpoints or not folder.is_dir():
                return
            for path in sorted(folder.iterdir()):
                if path.is_file() and CHECKPOINT_ARTIFACT_FILES.match(path.name):
                    client.log_artifact(run_id, str(path), f"checkpoints/{folder.name}")
            logger.info("logged checkpoint %s (epoch %.2f) to MLflow", folder.name, state.epoch)

    class HeldOutSamples(TrainerCallback):
        """Answers held-out prompts after each epoch (and before training) -> CSV artifact."""

        def __init__(self) -> None:
            self.sampled_epochs: set[int] = set()

        def _sample(self, model, state, epoch: int) -> None:
            if not samples or epoch in self.sampled_epochs:
                return
            self.sampled_epochs.add(epoch)
            rows = generate_samples(model, tokenizer, samples, recipe)
            if state.is_world_process_zero:
                path = (
                    Path(recipe.training.output_dir) / "samples" / f"samples_epoch_{epoch:02d}.csv"
                )
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "w", newline="") as handle:
                    writer = csv.DictWriter(
                        handle, fieldnames=["prompt_id", "prompt", "response", "epoch"]
                    )
                    writer.writeheader()
                    writer.writerows({**row, "epoch": epoch} for row in rows)
                if client is not None:
                    client.log_artifact(run_id, str(path), "samples")
                logger.info("generated samples for epoch %d: %d prompts", epoch, len(rows))

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if recipe.data.sample_at_start and state.global_step == 0:
                self._sample(model, state, 0)

        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            self._sample(model, state, round(state.epoch))

    class ParameterChanges(TrainerCallback):
        """Fingerprints every parameter at the start and end: trainable must move, frozen not."""

        def __init__(self) -> None:
            self.before: dict[str, tuple[float, float]] = {}
            self.trainable: dict[str, bool] = {}

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.trainable = {n: p.requires_grad for n, p in model.named_parameters()}
            self.before = parameter_fingerprints(model)

        def on_train_end(self, args, state, control, model=None, **kwargs):
            after = parameter_fingerprints(model)
            if not state.is_world_process_zero:
                return
            changed = {name: after[name] != self.before[name] for name in after}
            trainable = [n for n, t in self.trainable.items() if t]
            frozen = [n for n, t in self.trainable.items() if not t]
            report = {
                "trainable": len(trainable),
                "trainable_changed": sum(changed[n] for n in trainable),
                "frozen": len(frozen),
                "frozen_changed": sum(changed[n] for n in frozen),
                "trainable_unchanged_names": [n for n in trainable if not changed[n]],
                "frozen_changed_names": [n for n in frozen if changed[n]],
                "from_step": start_step,
                "to_step": state.global_step,
            }
            path = Path(args.output_dir) / "parameter_changes.json"
            path.write_text(json.dumps(report, indent=2))
            if client is not None:
                client.log_artifact(run_id, str(path), "training")
                stamp = int(time.time() * 1000)
                client.log_batch(
                    run_id,
                    metrics=[
                        Metric("params.trainable_changed", report["trainable_changed"], stamp, 0),
                        Metric("params.trainable", report["trainable"], stamp, 0),
                        Metric("params.frozen_changed", report["frozen_changed"], stamp, 0),
                        Metric("params.frozen", report["frozen"], stamp, 0),
                    ],
                )

    callbacks = [MlflowMetrics(), HeldOutSamples()]
    if recipe.run.check_parameter_changes:
        callbacks.append(ParameterChanges())
    return callbacks


def _zero3(model) -> bool:
    return any(hasattr(p, "ds_id") for p in model.parameters())


def parameter_fingerprints(model) -> dict[str, tuple[float, float]]:
    """(sum, sum of squares) of each parameter in float64; ZeRO-3 shards are gathered first."""
    import torch

    sharded = _zero3(model)
    fingerprints = {}
    for name, parameter in model.named_parameters():
        if sharded:
            import deepspeed

            with deepspeed.zero.GatheredParameters([parameter], modifier_rank=None):
                data = parameter.data.detach().to(torch.float64)
                fingerprints[name] = (float(data.sum()), float((data * data).sum()))
        else:
            data = parameter.data.detach().to(torch.float64)
            fingerprints[name] = (float(data.sum()), float((data * data).sum()))
    return fingerprints


def generate_samples(model, tokenizer, prompts: list[dict], recipe: Recipe) -> list[dict]:
    """Responses to held-out prompts, split across ranks and gathered (ZeRO-3 ranks in step)."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState()
    world, rank = state.num_processes, state.process_index
    per_rank = -(-len(prompts) // world)
    mine = prompts[rank * per_rank : (rank + 1) * per_rank]
    # Every rank makes the same number of generate calls so ZeRO-3 gathers stay in step.
    padded = mine + [prompts[0]] * (per_rank - len(mine))
    size = recipe.data.sample_batch_size
    sample = recipe.data.sample_temperature > 0
    chat = recipe.data.chat_format and bool(getattr(tokenizer, "chat_template", None))
    was_training = model.training
    model.eval()
    tokenizer.padding_side = "left"
    answers: list[str] = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(padded), size):
            batch = padded[start : start + size]
            texts = [row["rendered"] for row in batch]
            encoded = tokenizer(
                texts, return_tensors="pt", padding=True, add_special_tokens=not chat
            ).to(device)
            output = model.generate(
                **encoded,
                max_new_tokens=recipe.data.sample_max_new_tokens,
                do_sample=sample,
                temperature=recipe.data.sample_temperature if sample else None,
                top_p=recipe.data.sample_top_p if sample else None,
                pad_token_id=tokenizer.pad_token_id,
                synced_gpus=_zero3(model) and world > 1,
                use_cache=True,
            )
            new = output[:, encoded["input_ids"].shape[1] :]
            answers += tokenizer.batch_decode(new, skip_special_tokens=True)
    if was_training:
        model.train()
    rows = [
        {"prompt_id": row["prompt_id"], "prompt": row["prompt"], "response": answer.strip()}
        for row, answer in zip(mine, answers[: len(mine)], strict=True)
    ]
    gathered = gather_object(rows) if world > 1 else rows
    return sorted(gathered, key=lambda row: str(row["prompt_id"]))


# --------------------------------------------------------------------------------------------
# Data


def _truncate(tokenizer, text: str, limit: int | None) -> str:
    if limit is None:
        return text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= limit else tokenizer.decode(ids[:limit])


def load_pairs(recipe: Recipe, tokenizer):
    """Train split ready for DPOTrainer, and the held-out prompts rendered for sampling."""
    from datasets import load_from_disk

    path = recipe.data.dataset_path
    try:
        dataset = load_from_disk(path)
    except FileNotFoundError as error:
        raise RecipeError(f"dataset_path {path}: no DatasetDict there ({error})") from error
    for split in (recipe.data.train_split,):
        if split not in dataset:
            raise RecipeError(f"dataset_path {path}: no split '{split}' (has {list(dataset)})")
    train = dataset[recipe.data.train_split]
    missing = [c for c in ("prompt", "chosen", "rejected") if c not in train.column_names]
    if missing:
        raise RecipeError(f"dataset_path {path}: split '{recipe.data.train_split}' lacks {missing}")
    if recipe.data.max_train_samples is not None:
        train = train.select(range(min(recipe.data.max_train_samples, len(train))))
    chat = recipe.data.chat_format and bool(getattr(tokenizer, "chat_template", None))
    limit = recipe.data.max_prompt_length

    def shape(example):
        prompt = _truncate(tokenizer, example["prompt"], limit)
        if chat:
            return {
                "prompt": [{"role": "user", "content": prompt}],
                "chosen": [{"role": "assistant", "content": example["chosen"]}],
                "rejected": [{"role": "assistant", "content": example["rejected"]}],
            }
        return {"prompt": prompt}

    train = train.map(shape, desc="Formatting pairs")

    held_out: list[dict] = []
    if recipe.data.sample_prompts > 0 and recipe.data.test_split in dataset:
        seen: set[str] = set()
        for row in dataset[recipe.data.test_split]:
            key = str(row.get("prompt_id", row["prompt"]))
            if key in seen:
                continue
            seen.add(key)
            prompt = _truncate(tokenizer, row["prompt"], limit)
            rendered = (
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompt}],
                    add_generation_prompt=True,
                    tokenize=False,
                )
                if chat
                else prompt
            )
            held_out.append({"prompt_id": key, "prompt": row["prompt"], "rendered": rendered})
            if len(held_out) >= recipe.data.sample_prompts:
                break
    return train, held_out


# --------------------------------------------------------------------------------------------
# Model


def load_policy(recipe: Recipe):
    """Base model (optionally 4-bit), tokenizer, and the LoRA config the trainer applies."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import get_peft_config, get_quantization_config

    model_args = recipe.model
    dtype = model_args.dtype
    if dtype not in ("auto", None):
        dtype = getattr(torch, dtype)
    quantization = get_quantization_config(model_args)
    kwargs: dict[str, Any] = {
        "revision": model_args.model_revision,
        "dtype": dtype,
        "trust_remote_code": recipe.training.trust_remote_code,
    }
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if quantization is not None:
        from accelerate import PartialState

        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": PartialState().local_process_index}
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path, revision=model_args.model_revision
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, **kwargs)
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=recipe.training.gradient_checkpointing
        )
    return model, tokenizer, get_peft_config(model_args)


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("torch", "transformers", "accelerate", "peft", "tokenizers", "safetensors"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return pins


def log_final_model(recipe: Recipe, run_id: str, tokenizer) -> str | None:
    """Base + final adapter merged and logged with mlflow.transformers (registered if asked)."""
    import mlflow
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    output_dir = Path(recipe.training.output_dir)
    base = AutoModelForCausalLM.from_pretrained(
        recipe.model.model_name_or_path,
        revision=recipe.model.model_revision,
        dtype=torch.bfloat16 if recipe.training.bf16 else torch.float32,
    )
    if (output_dir / "adapter_config.json").is_file():
        model = PeftModel.from_pretrained(base, str(output_dir)).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(output_dir))
    with mlflow.start_run(run_id=run_id):
        info = mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tokenizer},
            name="policy",
            task="text-generation",
            registered_model_name=recipe.run.register_model_as,
            # Pinned from what is installed: inference would also ask for torchvision.
            pip_requirements=_requirements(),
            metadata={"base_model": recipe.model.model_name_or_path, "method": "dpo-lora-merged"},
        )
    return info.model_uri


# --------------------------------------------------------------------------------------------


def skip_cpu_shared_memory_allreduce() -> None:
    """Let CPU ranks all-reduce through gloo instead of DeepSpeed's shared-memory op.

    On CPU, DeepSpeed JIT-compiles that op (a C++ build of minutes on a small machine, cached
    in ~/.cache/torch_extensions) when its communication starts. Set HAL_DEEPSPEED_CPU_SHM=1
    to use it anyway; GPU runs are unaffected.
    """
    if os.environ.get("HAL_DEEPSPEED_CPU_SHM") == "1":
        return
    import torch

    if torch.cuda.is_available():
        return
    try:
        import deepspeed.ops
    except ImportError:
        return
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def main(arguments: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if arguments is None else arguments
    skip_cpu_shared_memory_allreduce()
    # 1. Recipe: typed, validated, before anything heavy is loaded.
    try:
        recipe = parse_recipe(arguments)
    except RecipeError as error:
        print(f"recipe error: {error}", file=sys.stderr)
        return 2
    if recipe.run.check_only:
        print(json.dumps(resolved_settings(recipe), indent=2))
        return 0

    import datasets
    import transformers
    from transformers import set_seed

    training_args = recipe.training
    # 2. Seed.
    set_seed(training_args.seed)

    # 3. Logging: the main process logs at info, the others at warning.
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = training_args.get_process_log_level()
    logger.setLevel(logging.INFO if training_args.process_index == 0 else level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    is_main = training_args.process_index == 0
    plugin = getattr(training_args, "deepspeed_plugin", None)
    logger.info(
        "process %d/%d, device %s, distributed %s, ZeRO stage %s, bf16 %s",
        training_args.process_index,
        training_args.world_size,
        training_args.device,
        training_args.distributed_state.distributed_type,
        plugin.zero_stage if plugin is not None else "-",
        training_args.bf16,
    )

    # 4. Resume: the newest complete checkpoint, unless a fresh start is asked for.
    output_dir = Path(training_args.output_dir)
    if recipe.run.fresh_start:
        with training_args.main_process_first(desc="fresh start"):
            if is_main and output_dir.exists():
                close_unfinished_run(output_dir)
                shutil.rmtree(output_dir)
    checkpoint = None if recipe.run.fresh_start else last_complete_checkpoint(output_dir)
    if checkpoint is not None:
        logger.info("resuming from %s", checkpoint)

    run_id = None
    if is_main:
        run_id = open_mlflow_run(recipe, output_dir, resume=checkpoint is not None)
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        _log_params(client, run_id, resolved_settings(recipe))
        if checkpoint is not None:
            step = int(CHECKPOINT_PATTERN.match(checkpoint.name).group(1))
            client.set_tag(run_id, "hal.resumed_from", checkpoint.name)
            client.log_metric(run_id, "train.resumed_from_step", step, step=step)
            logger.info("MLflow run %s continues after step %d", run_id, step)

    try:
        train_and_log(recipe, checkpoint, run_id)
    except BaseException:
        if run_id is not None:
            from mlflow.tracking import MlflowClient

            MlflowClient().set_terminated(run_id, "FAILED")
        raise
    return 0


def train_and_log(recipe: Recipe, checkpoint: Path | None, run_id: str | None) -> None:
    """Steps 5-9 of the checklist: model, data, train, save, log (rank 0 logs)."""
    from trl import DPOTrainer

    training_args = recipe.training
    output_dir = Path(training_args.output_dir)
    is_main = training_args.process_index == 0

    # 5. Model and tokenizer (+ LoRA config applied by the trainer).
    model, tokenizer, peft_config = load_policy(recipe)

    # 6. Data.
    train_dataset, held_out = load_pairs(recipe, tokenizer)
    logger.info("%d training pairs, %d held-out prompts", len(train_dataset), len(held_out))

    # 7. Train.
    start_step = int(CHECKPOINT_PATTERN.match(checkpoint.name).group(1)) if checkpoint else 0
    trainer = DPOTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=_make_callbacks(recipe, run_id, held_out, tokenizer, start_step),
    )
    # DPOTrainer forces use_reentrant for PEFT + ZeRO-3 through the deprecated alias
    # gradient_checkpointing_kwargs, which Trainer no longer reads; carry it over.
    if training_args.gradient_checkpointing_kwargs and not (
        training_args.activation_checkpointing_kwargs
    ):
        training_args.activation_checkpointing_kwargs = training_args.gradient_checkpointing_kwargs
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    logger.info("training finished at step %d: %s", trainer.state.global_step, result.metrics)

    # 8. Save the adapter and tokenizer (every rank takes part under ZeRO-3).
    trainer.save_model(str(output_dir))
    if is_main:
        tokenizer.save_pretrained(str(output_dir))
    training_args.distributed_state.wait_for_everyone()

    # 9. Log the final adapter and the merged, registered model.
    if is_main and run_id is not None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        for path in sorted(output_dir.iterdir()):
            if path.is_file() and CHECKPOINT_ARTIFACT_FILES.match(path.name):
                client.log_artifact(run_id, str(path), "final")
        if recipe.run.log_final_model:
            uri = log_final_model(recipe, run_id, tokenizer)
            logger.info("final model logged: %s", uri)
        client.set_terminated(run_id, "FINISHED")
    training_args.distributed_state.wait_for_everyone()


if __name__ == "__main__":
    sys.exit(main())
