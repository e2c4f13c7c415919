"""DPO training throughput of two shipped recipes, measured in one run by the training script.

    python bench/dpo_throughput.py --steps 4          # GPU: the paper's QLoRA recipe vs ours
    python bench/dpo_throughput.py --tiny --steps 1   # CPU: the same recipes on a tiny Llama

Each arm runs ``scripts/train_dpo.py`` with a recipe of infra/recipes/dpo/ exactly as
``hal align`` launches it (one process), for ``--steps`` optimizer steps on the same model and
the same pairs: real doctor's-visit candidates of ``synthlabs/candidates_test.csv`` paired by
prompt (prompts ~550 tokens, responses 400-1500). The model is Llama-3.2-1B-shaped with random
weights and SmolLM2's tokenizer (nothing is downloaded); ``--tiny`` shrinks it for CPUs and
overrides only what a CPU cannot run (4-bit, bf16, fused AdamW, TF32) and cuts sequences to 128
tokens, the same for both arms (on CPU, TRL scores every position over SmolLM2's 49k-token
vocabulary: that sets the cost of --tiny, ~2 min for --steps 1 on 2 cores).

Printed per arm: real tokens/s (prompt, chosen and rejected tokens of the pairs trained, as the
recipe cuts them, over the trainer's ``train_runtime``, which includes the reference log-probs a
recipe precomputes) and peak GPU memory; then the ratio of the two arms.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARMS = {"paper": "llama-3.2-1b-qlora-paper", "ours": "llama-3.2-1b-lora-fast"}
LLAMA_32_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                   num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                   max_position_embeddings=131072, rms_norm_eps=1e-5,
                   tie_word_embeddings=True)  # fmt: skip
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=2048,
            tie_word_embeddings=True)  # fmt: skip
CPU_OVERRIDES = {"load_in_4bit": False, "use_bnb_nested_quant": False, "bf16": False,
                 "tf32": False, "dtype": "float32", "optim": "adamw_torch",
                 "dataloader_num_workers": 0, "max_length": 128,
                 "max_prompt_length": 48}  # fmt: skip
RESULT = "BENCH-RESULT "


def build_model(folder: Path, tiny: bool) -> None:
    """A random-init Llama with SmolLM2's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from hal_core.policy_model import DEFAULT_POLICY_MODEL, resolve_policy_model
    from hal_core.settings import get_settings

    models_dir = get_settings().home_dir / "models"
    policy_folder = resolve_policy_model(DEFAULT_POLICY_MODEL, models_dir)
    tokenizer = AutoTokenizer.from_pretrained(policy_folder)
    config = LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        **(TINY if tiny else LLAMA_32_1B),
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.float32 if tiny else torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def build_pairs(folder: Path, count: int, max_prompt: int | None, max_length: int) -> int:
    """``count`` pairs of real candidates (same prompt, two responses); the tokens a recipe
    trains on: the prompt cut to ``max_prompt``, each sequence cut to ``max_length``."""
    from transformers import AutoTokenizer

    from hal_core.generation import load_candidates
    from hal_core.preferences import PAIR_COLUMNS, to_dataset_dict
    from hal_core.settings import get_settings

    data = get_settings().require_data_dir() / "synthlabs"
    candidates = load_candidates(data / "candidates_test.csv", data / "prompts_test.csv")
    rows = []
    for prompt_id, group in candidates.groupby("prompt_id", sort=True):
        first, second = group.head(2).to_dict("records")
        rows.append({"pair_id": f"{prompt_id}", "prompt_id": prompt_id, "prompt": first["prompt"],
                     "chosen": first["response"], "rejected": second["response"],
                     "chosen_id": first["candidate_id"], "rejected_id": second["candidate_id"],
                     "chosen_score": 1.0, "rejected_score": 0.0, "delta": 1.0})  # fmt: skip
        if len(rows) == count:
            break
    import pandas as pd

    table = pd.DataFrame(rows, columns=list(PAIR_COLUMNS))
    to_dataset_dict({"train": table, "test": table.head(0)}).save_to_disk(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(folder.parent / "model")

    def length(text: str) -> int:
        return len(tokenizer(text)["input_ids"])

    total = 0
    for row in rows:
        prompt = min(length(row["prompt"]), max_prompt or max_length)
        total += sum(min(prompt + length(row[side]), max_length) for side in ("chosen", "rejected"))
    return total


def run_arm(arm: str, work: Path, steps: int, tiny: bool) -> dict:
    """The training script in a child process; its train_runtime and peak GPU memory."""
    overrides = {"max_steps": steps, "save_strategy": "no", "eval_strategy": "no",
                 "report_to": "none", "logging_steps": 1, "disable_tqdm": True,
                 **(CPU_OVERRIDES if tiny else {})}  # fmt: skip
    arguments = ["--config", str(ROOT / "infra/recipes/dpo" / f"{ARMS[arm]}.yaml"),
                 "--model_name_or_path", str(work / "model"),
                 "--dataset_path", str(work / f"pairs-{arm}"),
                 "--output_dir", str(work / f"out-{arm}"),
                 *[f"--{key}={json.dumps(value) if not isinstance(value, str) else value}"
                   for key, value in overrides.items()]]  # fmt: skip
    child = (
        "import json, runpy, sys, torch\n"
        f"sys.argv = ['train_dpo.py', *{arguments!r}]\n"
        "try:\n    runpy.run_path('scripts/train_dpo.py', run_name='__main__')\n"
        "except SystemExit as stop:\n    assert not stop.code, stop.code\n"
        "peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None\n"
        f"print({RESULT!r} + json.dumps({{'peak_gib': peak}}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run([sys.executable, "-c", child], cwd=ROOT, env=env,
                               capture_output=True, text=True, check=False)  # fmt: skip
    output = completed.stdout + completed.stderr
    runtime = re.findall(r"'train_runtime': '?([\d.]+)", output)
    marker = [line for line in completed.stdout.splitlines() if line.startswith(RESULT)]
    if completed.returncode != 0 or not runtime or not marker:
        raise RuntimeError(f"{arm} ({ARMS[arm]}) failed:\n{output[-4000:]}")
    return {"runtime_s": float(runtime[-1]), **json.loads(marker[-1][len(RESULT) :])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="Optimizer steps per arm.")
    parser.add_argument("--tiny", action="store_true", help="CPU run with a tiny Llama.")
    arguments = parser.parse_args()
    import torch

    if not arguments.tiny and not torch.cuda.is_available():
        print("no CUDA GPU: use --tiny for the CPU run", file=sys.stderr)
        return 2
    from hal_core.dpo_recipe import parse_recipe

    results = {}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        build_model(work / "model", arguments.tiny)
        for arm, recipe in ARMS.items():
            base = ["--config", str(ROOT / "infra/recipes/dpo" / f"{recipe}.yaml"),
                    "--dataset_path", "x", "--output_dir", "x"]  # fmt: skip
            if arguments.tiny:
                base += [f"--{key}={value}" for key, value in CPU_OVERRIDES.items()]
            hal, training, _ = parse_recipe(base)
            pairs = (arguments.steps * training.per_device_train_batch_size
                     * training.gradient_accumulation_steps)  # fmt: skip
            tokens = build_pairs(
                work / f"pairs-{arm}", pairs, hal.max_prompt_length, training.max_length
            )
            result = run_arm(arm, work, arguments.steps, arguments.tiny)
            results[arm] = {**result, "pairs": pairs, "tokens": tokens,
                            "tokens_per_second": tokens / result["runtime_s"]}  # fmt: skip
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"device: {device}; {arguments.steps} optimizer steps per arm")
    print(f"{'arm':<6} {'recipe':<26} {'pairs':>6} {'tokens/s':>10} {'peak GiB':>9}")
    for arm, result in results.items():
        peak = f"{result['peak_gib']:.2f}" if result["peak_gib"] is not None else "-"
        print(f"{arm:<6} {ARMS[arm]:<26} {result['pairs']:>6} "
              f"{result['tokens_per_second']:>10.1f} {peak:>9}")  # fmt: skip
    ratio = results["ours"]["tokens_per_second"] / results["paper"]["tokens_per_second"]
    print(f"ratio ours / paper: {ratio:.2f}x tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
