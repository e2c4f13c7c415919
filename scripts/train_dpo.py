"""DPO + LoRA training: a YAML recipe in, LoRA checkpoints and curves in MLflow out.

Started by ``accelerate launch`` (the ``align`` flow does it), never imported by the flow
process. ``main()`` is a checklist: recipe, seed, logging, resume, MLflow run, model and data,
train, save. ``TrlParser`` reads a recipe of infra/recipes/dpo/ plus ``--key value`` overrides.
From the project root::

    python scripts/train_dpo.py --config infra/recipes/dpo/smollm2-cpu.yaml --check_only
    accelerate launch --config_file infra/accelerate/zero2.yaml --num_processes 2 \
        scripts/train_dpo.py --config infra/recipes/dpo/smollm2-cpu.yaml \
        --model_name_or_path <model folder> --dataset_path <pairs> --output_dir <folder>
    accelerate launch --config_file infra/accelerate/zero3.yaml --num_processes 8 \
        scripts/train_dpo.py --config infra/recipes/dpo/llama-3.2-1b-lora-fast.yaml \
        --dataset_path <pairs>

``<pairs>`` is a ``DatasetDict`` saved by the ``align`` flow. The MLflow run nests under
``HAL_MLFLOW_PARENT_RUN_ID``; transformers' MLflow callback logs the curves into it, and a
resumed training keeps logging to the same run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

from hal_core.dialogue import SpeakerTags, chat_messages
from hal_core.dpo_recipe import HalArguments, parse_recipe
from hal_core.training import RUN_RECORD, last_complete_checkpoint, recorded_run_id

logger = logging.getLogger("train_dpo")
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", "trainer_state.json")  # fmt: skip


def open_mlflow_run(hal: HalArguments, output_dir: Path, resume: bool) -> str:
    """The run to log to: the one recorded in ``output_dir`` when resuming, else a new child run.

    transformers' MLflow callback logs into it through ``MLFLOW_RUN_ID``; it cannot itself nest
    a run under a parent started in another process, nor resume one across restarts.
    """
    client = MlflowClient()
    recorded = recorded_run_id(output_dir)
    if recorded and resume:
        client.update_run(recorded, status="RUNNING")
        return recorded
    if recorded and client.get_run(recorded).info.status == "RUNNING":
        client.set_terminated(recorded, "KILLED")  # stopped before its first checkpoint
    tags = {"hal.stage": "train_dpo"}
    if hal.mlflow_parent_run_id:
        experiment_id = client.get_run(hal.mlflow_parent_run_id).info.experiment_id
        tags["mlflow.parentRunId"] = hal.mlflow_parent_run_id
    else:
        found = client.get_experiment_by_name(hal.mlflow_experiment)
        name = hal.mlflow_experiment
        experiment_id = found.experiment_id if found else client.create_experiment(name)
    run = client.create_run(experiment_id, tags=tags, run_name="train_dpo")
    output_dir.mkdir(parents=True, exist_ok=True)
    payload = {"run_id": run.info.run_id, "parent_run_id": hal.mlflow_parent_run_id}
    (output_dir / RUN_RECORD).write_text(json.dumps(payload))
    return run.info.run_id


def load_pairs(hal: HalArguments, tokenizer):
    """Train and eval splits shaped for DPOTrainer (conversational when a chat format is set)."""
    from datasets import load_from_disk

    dataset = load_from_disk(hal.dataset_path)
    chat = hal.chat_format != "none" and bool(getattr(tokenizer, "chat_template", None))
    tags = SpeakerTags.doctor_visit()

    def cut(text: str, limit: int | None = hal.max_prompt_length) -> str:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] if limit else []
        return tokenizer.decode(ids[:limit]) if limit and len(ids) > limit else text

    def shape(example):
        if not chat:
            return {"prompt": cut(example["prompt"])}
        if hal.chat_format == "roleplay":
            prompt, chosen = chat_messages(example["chosen"], tags, example["prompt"])
            rejected_prompt, rejected = chat_messages(example["rejected"], tags, example["prompt"])
            if rejected_prompt != prompt:
                raise ValueError(f"pair {example['pair_id']}: chosen and rejected open differently")
            return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        return {
            "prompt": [{"role": "user", "content": cut(example["prompt"])}],
            "chosen": [{"role": "assistant", "content": example["chosen"]}],
            "rejected": [{"role": "assistant", "content": example["rejected"]}],
        }

    train = dataset[hal.train_split]
    if hal.max_train_samples is not None:
        train = train.select(range(min(hal.max_train_samples, len(train))))
    held_out = dataset[hal.eval_split] if len(dataset.get(hal.eval_split, [])) else None
    train = train.map(shape, desc="Formatting pairs")
    return train, held_out.map(shape, desc="Formatting held-out pairs") if held_out else None


def checkpoint_artifacts_callback(run_id: str | None):
    """Logs each checkpoint's adapter (transformers' callback would log a whole pyfunc model)."""
    from transformers import TrainerCallback

    class CheckpointArtifacts(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and run_id is not None and folder.is_dir():
                log_adapter(run_id, folder, f"checkpoints/{folder.name}")
                logger.info("logged checkpoint %s (epoch %.2f)", folder.name, state.epoch)

    return CheckpointArtifacts()


def log_adapter(run_id: str, folder: Path, artifact_path: str) -> None:
    for name in ADAPTER_FILES:
        if (folder / name).is_file():
            MlflowClient().log_artifact(run_id, str(folder / name), artifact_path)


def skip_cpu_shared_memory_allreduce() -> None:
    """On CPU, DeepSpeed JIT-compiles a shared-memory all-reduce op (minutes of C++ build)
    when communication starts; gloo does the job. HAL_DEEPSPEED_CPU_SHM=1 keeps the op.

    Only a DeepSpeed launch (``accelerate launch`` sets ACCELERATE_USE_DEEPSPEED) starts that
    communication, so a plain ``--check_only`` run skips the seconds of importing DeepSpeed.
    """
    deepspeed_launch = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    keep = os.environ.get("HAL_DEEPSPEED_CPU_SHM") == "1"
    if deepspeed_launch and not keep and not torch.cuda.is_available():
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def main(arguments: list[str] | None = None) -> int:
    skip_cpu_shared_memory_allreduce()
    # 1. Recipe: typed and checked before anything heavy is loaded (`hal align` checked it
    # before reading data; this run checks it again with the pairs and model it was given).
    try:
        hal, training, model_args = parse_recipe(sys.argv[1:] if arguments is None else arguments)
    except ValueError as error:
        print(f"recipe error: {error}", file=sys.stderr)
        return 2
    if hal.check_only:
        settings = {"hal": vars(hal), "model": vars(model_args), "training": training.to_dict()}
        print(json.dumps(settings, indent=2, default=str))
        return 0

    import datasets
    import transformers
    from trl import DPOTrainer, get_peft_config, get_quantization_config

    # 2. Seed.
    transformers.set_seed(training.seed)
    # 3. Logging: the main process at info, the others at warning.
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%X")
    is_main = training.process_index == 0
    level = training.get_process_log_level()
    logger.setLevel(logging.INFO if is_main else level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    plugin = getattr(training, "deepspeed_plugin", None)
    logger.info(
        "process %d/%d, device %s, distributed %s, ZeRO stage %s, bf16 %s",
        training.process_index, training.world_size, training.device,
        training.distributed_state.distributed_type,
        plugin.zero_stage if plugin is not None else "-", training.bf16,
    )  # fmt: skip

    # 4. Resume from the newest complete checkpoint, unless a fresh start is asked for.
    output_dir = Path(training.output_dir)
    if hal.fresh_start and is_main and output_dir.exists():
        shutil.rmtree(output_dir)
    training.distributed_state.wait_for_everyone()
    checkpoint = None if hal.fresh_start else last_complete_checkpoint(output_dir)
    if checkpoint is not None:
        logger.info("resuming from %s", checkpoint.path.name)

    # 5. MLflow run (rank 0): transformers' callback logs the curves into it.
    run_id = None
    if is_main and "mlflow" in training.report_to:
        run_id = open_mlflow_run(hal, output_dir, resume=checkpoint is not None)
        os.environ["MLFLOW_RUN_ID"] = run_id
        if checkpoint is not None:
            MlflowClient().set_tag(run_id, "hal.resumed_from", checkpoint.path.name)
    try:
        # 6. Model (LoRA applied by the trainer) and data.
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_args.model_name_or_path)
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
        train_pairs, eval_pairs = load_pairs(hal, tokenizer)
        logger.info("%d training pairs, %d held-out pairs", len(train_pairs), len(eval_pairs or []))
        if eval_pairs is None and training.eval_strategy != "no":
            logger.warning("no held-out pairs in split %r: no eval curves", hal.eval_split)
            training.eval_strategy = "no"
        training.model_init_kwargs = {
            "dtype": model_args.dtype,
            "attn_implementation": model_args.attn_implementation,
            **(training.model_init_kwargs or {}),
        }
        peft_config = get_peft_config(model_args)
        if peft_config is not None and hal.lora_last_layers is not None:
            depth = transformers.AutoConfig.from_pretrained(model_args.model_name_or_path)
            layers = depth.num_hidden_layers
            peft_config.layers_to_transform = list(
                range(max(0, layers - hal.lora_last_layers), layers)
            )
        trainer = DPOTrainer(
            model=model_args.model_name_or_path,
            args=training,
            train_dataset=train_pairs,
            eval_dataset=eval_pairs if training.eval_strategy != "no" else None,
            processing_class=tokenizer,
            peft_config=peft_config,
            quantization_config=get_quantization_config(model_args),
            callbacks=[checkpoint_artifacts_callback(run_id)],
        )
        # 7. Train.
        trainer.train(resume_from_checkpoint=str(checkpoint.path) if checkpoint else None)
        # 8. Save the final adapter (every rank takes part under ZeRO-3) and log it.
        trainer.save_model(str(output_dir))
        if is_main:
            tokenizer.save_pretrained(str(output_dir))
            if run_id is not None:
                log_adapter(run_id, output_dir, "final")
                MlflowClient().set_terminated(run_id, "FINISHED")
        training.distributed_state.wait_for_everyone()
        trainer.end()
    except BaseException:
        if run_id is not None:
            MlflowClient().set_terminated(run_id, "FAILED")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
