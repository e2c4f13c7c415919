"""DPO training throughput: the HAL paper's configuration against ours, measured in one run.

    python bench/dpo_throughput.py --steps 4            # GPU: Llama-3.2-1B-shaped, both arms
    python bench/dpo_throughput.py --tiny --steps 2     # CPU: a tiny Llama, for tests

Both arms train the same randomly initialised Llama-3.2-1B-shaped model (built from its
config; nothing is downloaded) with LoRA (r 16, all linear projections) on the same synthetic
preference pairs (prompt ~550 tokens, responses 400-1500, as in our doctor's-visit data), with
the same effective batch of 32 pairs per optimizer step and the same DPO step: policy forward
on chosen and rejected, summed completion log-probs through a chunked LM head, the reference
log-probs from the base model (adapter disabled), the sigmoid loss.

(a) paper: 4-bit NF4 QLoRA (bitsandbytes; without it the base stays bf16 and the arm is
    labelled so), micro-batch 2 pairs, gradient accumulation 16, gradient checkpointing,
    batches padded to their longest sequence, the reference forward in every step, AdamW.
(b) ours:  bf16 LoRA, micro-batch 8 pairs (halved on out-of-memory), accumulation 4, no
    checkpointing, padding-free batches (sequences packed into one row when flash-attention
    varlen kernels are installed; otherwise micro-batches of similar length, so almost no
    padding), reference log-probs computed once up front (their time is counted), fused AdamW,
    Liger's fused RMSNorm/SwiGLU/RoPE kernels when installed, TF32.

Printed per arm: tokens/s (real tokens of chosen and rejected sequences, prompt included, over
the timed steps after one warm-up step) and peak GPU memory; then the ratio. On a GPU each arm
runs in a child process so its peak memory is its own (ours retries with a halved micro-batch
when it runs out of memory).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

LLAMA_32_1B = {
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
    "rope_parameters": {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
}
TINY = {
    "vocab_size": 2048,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BETA = 0.1
RESULT_PREFIX = "RESULT "


@dataclass(frozen=True)
class Arm:
    name: str
    quantize_4bit: bool
    micro_batch: int
    grad_accum: int
    checkpointing: bool
    padding_free: bool
    precompute_reference: bool
    fused_optimizer: bool
    fused_kernels: bool


def arms(pairs_per_step: int, tiny: bool) -> dict[str, Arm]:
    ours_micro = 2 if tiny else 8
    return {
        "paper": Arm("paper", not tiny, 2, pairs_per_step // 2, True, False, False, False, False),
        "ours": Arm(
            "ours", False, ours_micro, pairs_per_step // ours_micro, False, True, True, True, True
        ),
    }


# -- data --------------------------------------------------------------------------------------


def make_pairs(count: int, vocab: int, tiny: bool, seed: int) -> list[dict]:
    """Synthetic pairs of token ids with our data's length profile (tiny: scaled down)."""
    import random

    rng = random.Random(seed)
    prompt_range, response_range, limit = (
        ((20, 40), (10, 60), 128) if tiny else ((450, 650), (400, 1500), 2048)
    )
    pairs = []
    for _ in range(count):
        prompt = [rng.randrange(16, vocab) for _ in range(rng.randint(*prompt_range))]
        room = limit - len(prompt)
        chosen = [rng.randrange(16, vocab) for _ in range(min(room, rng.randint(*response_range)))]
        rejected = [
            rng.randrange(16, vocab) for _ in range(min(room, rng.randint(*response_range)))
        ]
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pairs


def real_tokens(pairs: list[dict]) -> int:
    return sum(2 * len(p["prompt"]) + len(p["chosen"]) + len(p["rejected"]) for p in pairs)


def sequences(pairs: list[dict]) -> list[tuple[list[int], int]]:
    """(ids, prompt length) for every chosen, then every rejected sequence."""
    return [
        (p["prompt"] + p[side], len(p["prompt"])) for side in ("chosen", "rejected") for p in pairs
    ]


def padded_batch(pairs: list[dict], device):
    """Right-padded ids, attention mask and completion mask (labels are ids shifted by one)."""
    import torch

    rows = sequences(pairs)
    width = max(len(ids) for ids, _ in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    attention = torch.zeros(len(rows), width, dtype=torch.long)
    completion = torch.zeros(len(rows), width, dtype=torch.bool)
    for row, (tokens, prompt_length) in enumerate(rows):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        attention[row, : len(tokens)] = 1
        completion[row, prompt_length : len(tokens)] = True
    return {
        "input_ids": ids.to(device),
        "attention_mask": attention.to(device),
        "completion": completion.to(device),
        "segments": None,
    }


def packed_batch(pairs: list[dict], device):
    """All sequences in one row; position ids restart per sequence (no padding at all)."""
    import torch

    rows = sequences(pairs)
    ids, positions, completion, segments = [], [], [], []
    for index, (tokens, prompt_length) in enumerate(rows):
        ids += tokens
        positions += list(range(len(tokens)))
        completion += [False] * prompt_length + [True] * (len(tokens) - prompt_length)
        segments += [index] * len(tokens)
    return {
        "input_ids": torch.tensor([ids], device=device),
        "position_ids": torch.tensor([positions], device=device),
        "completion": torch.tensor([completion], device=device),
        "segments": torch.tensor(segments, device=device),
    }


def micro_batches(pairs: list[dict], size: int, group_by_length: bool) -> list[list[dict]]:
    ordered = (
        sorted(pairs, key=lambda p: len(p["prompt"]) + max(len(p["chosen"]), len(p["rejected"])))
        if group_by_length
        else pairs
    )
    return [ordered[start : start + size] for start in range(0, len(ordered), size)]


# -- model and DPO step ------------------------------------------------------------------------


def build_base(folder: str, tiny: bool) -> None:
    """A random-init Llama from config, saved so both arms load identical weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**(TINY if tiny else LLAMA_32_1B), bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    dtype = torch.float32 if tiny else torch.bfloat16
    device = "cuda" if torch.cuda.is_available() and not tiny else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(folder)


def load_policy(folder: str, arm: Arm, device, tiny: bool):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    notes = []
    kwargs = {"dtype": torch.float32 if tiny else torch.bfloat16}
    attention = "sdpa"
    if arm.padding_free and not tiny:
        try:
            import flash_attn  # noqa: F401

            attention = "flash_attention_2"
        except ImportError:
            notes.append("flash-attn missing: length-grouped micro-batches instead of packing")
    kwargs["attn_implementation"] = attention
    if arm.fused_kernels:
        try:
            from liger_kernel.transformers import apply_liger_kernel_to_llama

            apply_liger_kernel_to_llama(
                rope=True,
                rms_norm=True,
                swiglu=True,
                cross_entropy=False,
                fused_linear_cross_entropy=False,
            )
            notes.append("liger kernels: rope, rms_norm, swiglu")
        except ImportError:
            notes.append("liger-kernel missing: unfused RMSNorm/SwiGLU/RoPE")
    quantized = False
    if arm.quantize_4bit:
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            )
            kwargs["device_map"] = {"": 0}
            quantized = True
        except ImportError:
            notes.append("bitsandbytes missing: base kept in bf16 (no 4-bit)")
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if not quantized:
        model.to(device)
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=arm.checkpointing)
    elif arm.checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.20
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"
    )
    model = get_peft_model(model, lora)
    if quantized:
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.to(torch.bfloat16)
    return model, attention, quantized, notes


def _chunk_logps(hidden, weight, labels):
    import torch

    logits = hidden @ weight.t()
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, labels[:, None]).squeeze(-1)


def sequence_logps(model, batch, chunk: int = 4096):
    """Summed log-probs of completion tokens per sequence, without materialising all logits."""
    import torch
    from torch.utils.checkpoint import checkpoint

    base = model.get_base_model()
    inputs = {"input_ids": batch["input_ids"], "use_cache": False}
    if batch["segments"] is None:
        inputs["attention_mask"] = batch["attention_mask"]
    else:
        inputs["position_ids"] = batch["position_ids"]
    hidden = base.model(**inputs).last_hidden_state[:, :-1]
    labels = batch["input_ids"][:, 1:]
    keep = batch["completion"][:, 1:]
    flat_hidden = hidden[keep]
    flat_labels = labels[keep]
    weight = base.lm_head.weight
    pieces = [
        checkpoint(
            _chunk_logps,
            flat_hidden[i : i + chunk],
            weight,
            flat_labels[i : i + chunk],
            use_reentrant=False,
        )
        if torch.is_grad_enabled()
        else _chunk_logps(flat_hidden[i : i + chunk], weight, flat_labels[i : i + chunk])
        for i in range(0, flat_hidden.shape[0], chunk)
    ]
    token_logps = torch.cat(pieces)
    if batch["segments"] is None:
        rows = torch.arange(keep.shape[0], device=keep.device)[:, None].expand_as(keep)[keep]
        count = keep.shape[0]
    else:
        rows = batch["segments"][1:][keep[0]]
        count = int(batch["segments"].max()) + 1
    return torch.zeros(count, device=token_logps.device).index_add(0, rows, token_logps)


def dpo_loss(policy, reference):
    import torch.nn.functional as F

    half = policy.shape[0] // 2
    margin = (policy[:half] - reference[:half]) - (policy[half:] - reference[half:])
    return -F.logsigmoid(BETA * margin).mean()


def reference_logps(model, batch):
    import torch

    with torch.no_grad(), model.disable_adapter():
        return sequence_logps(model, batch)


# -- one arm -----------------------------------------------------------------------------------


def run_arm(arm: Arm, folder: str, steps: int, pairs_per_step: int, tiny: bool) -> dict:
    import torch

    cuda = torch.cuda.is_available() and not tiny
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = arm.fused_optimizer
        torch.cuda.reset_peak_memory_stats()
    model, attention, quantized, notes = load_policy(folder, arm, device, tiny)
    vocab = model.get_base_model().config.vocab_size
    pairs = make_pairs(steps * pairs_per_step, vocab, tiny, seed=1)
    step_pairs = [pairs[i * pairs_per_step : (i + 1) * pairs_per_step] for i in range(steps)]
    # Packing needs varlen attention to pay off on a GPU; on the CPU it runs through SDPA with a
    # block-diagonal mask, which checks the packed path against the padded one.
    pack = arm.padding_free and (attention == "flash_attention_2" or tiny)
    make_batch = packed_batch if pack else padded_batch
    schedule = [
        [
            make_batch(chunk, device)
            for chunk in micro_batches(group, arm.micro_batch, arm.padding_free)
        ]
        for group in step_pairs
    ]
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=1e-5,
        fused=arm.fused_optimizer and cuda,
        foreach=None if arm.fused_optimizer and cuda else True,
    )

    def sync():
        if cuda:
            torch.cuda.synchronize()

    check = None
    if arm.padding_free and pack:
        with torch.no_grad():
            first = step_pairs[0][: arm.micro_batch]
            a = sequence_logps(model, packed_batch(first, device))
            b = sequence_logps(model, padded_batch(first, device))
            check = float(((a - b).abs() / b.abs()).max())

    references: dict[int, object] = {}
    sync()
    start_reference = time.perf_counter()
    if arm.precompute_reference:
        model.eval()
        for step, batches in enumerate(schedule):
            for index, batch in enumerate(batches):
                references[(step, index)] = reference_logps(model, batch)
    sync()
    reference_seconds = time.perf_counter() - start_reference
    model.train()
    marks = []
    losses = []
    for step, batches in enumerate(schedule):
        step_loss = 0.0
        for index, batch in enumerate(batches):
            reference = references.get((step, index))
            if reference is None:
                reference = reference_logps(model, batch)
            loss = dpo_loss(sequence_logps(model, batch), reference) / len(batches)
            loss.backward()
            step_loss += float(loss.detach())
        losses.append(step_loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        marks.append(time.perf_counter())
    timed_steps = steps - 1
    train_seconds = marks[-1] - marks[0]
    # The up-front reference pass is charged to the timed steps in proportion to their pairs.
    charged = reference_seconds * timed_steps / steps
    tokens = sum(real_tokens(group) for group in step_pairs[1:])
    padded = sum(int(b["input_ids"].numel()) for batches in schedule[1:] for b in batches)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "arm": arm.name,
        "settings": asdict(arm),
        "attention": attention,
        "packed": pack,
        "quantized_4bit": quantized,
        "notes": notes,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "timed_steps": timed_steps,
        "tokens": tokens,
        "tokens_incl_padding": padded,
        "train_seconds": train_seconds,
        "reference_seconds_charged": charged,
        "tokens_per_second": tokens / (train_seconds + charged),
        "peak_memory_gib": peak,
        "peak_memory_kind": "GPU allocated" if cuda else "process RSS",
        "packed_vs_padded_max_rel_diff": check,
        "losses": losses,
    }


def child(arguments) -> None:
    arm = arms(arguments.pairs_per_step, arguments.tiny)[arguments.arm]
    if arguments.micro_batch:
        arm = Arm(
            **{
                **asdict(arm),
                "micro_batch": arguments.micro_batch,
                "grad_accum": arguments.pairs_per_step // arguments.micro_batch,
            }
        )
    result = run_arm(
        arm, arguments.model_dir, arguments.steps, arguments.pairs_per_step, arguments.tiny
    )
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_child(arguments, arm: str, micro_batch: int | None) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--arm",
        arm,
        "--model-dir",
        arguments.model_dir,
        "--steps",
        str(arguments.steps),
        "--pairs-per-step",
        str(arguments.pairs_per_step),
    ]
    if arguments.tiny:
        command.append("--tiny")
    if micro_batch:
        command += ["--micro-batch", str(micro_batch)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in completed.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    out_of_memory = "OutOfMemoryError" in completed.stderr or "out of memory" in completed.stderr
    return {"arm": arm, "error": completed.stderr[-3000:], "out_of_memory": out_of_memory}


def print_table(results: list[dict]) -> None:
    print(
        f"{'arm':<6} {'tokens/s':>10} {'peak GiB':>9} {'timed tokens':>13} {'pad %':>6}  settings"
    )
    for result in results:
        arm = result["settings"]
        padding = 100 * (1 - result["tokens"] / result["tokens_incl_padding"])
        base = (
            "4-bit" if result["quantized_4bit"] else "bf16" if result["device"] != "cpu" else "fp32"
        )
        batching = (
            "packed" if result["packed"] else "length-grouped" if arm["padding_free"] else "padded"
        )
        label = (
            f"{base} micro {arm['micro_batch']} x accum {arm['grad_accum']}, "
            f"checkpointing {'on' if arm['checkpointing'] else 'off'}, "
            f"{batching}, reference "
            f"{'precomputed' if arm['precompute_reference'] else 'every step'}, "
            f"attention {result['attention']}"
        )
        memory = f"{result['peak_memory_gib']:>9.2f}" if result["device"] != "cpu" else f"{'-':>9}"
        print(
            f"{result['arm']:<6} {result['tokens_per_second']:>10.1f} "
            f"{memory} {result['tokens']:>13d} {padding:>6.1f}  {label}"
        )
        for note in result["notes"]:
            print(f"{'':<6} note: {note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="Optimizer steps per arm (1 warm-up).")
    parser.add_argument("--pairs-per-step", type=int, default=None, help="Effective batch (32).")
    parser.add_argument("--tiny", action="store_true", help="CPU run with a tiny Llama.")
    parser.add_argument("--json", default=None, help="Also write the results to this file.")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--arm", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--micro-batch", type=int, default=None, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.pairs_per_step is None:
        arguments.pairs_per_step = 4 if arguments.tiny else 32
    if arguments.steps < 2:
        parser.error("--steps must be at least 2 (the first one is a warm-up)")
    if arguments.child:
        child(arguments)
        return 0

    import torch

    if not arguments.tiny and not torch.cuda.is_available():
        print("no CUDA GPU: use --tiny for the CPU run", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory() as folder:
        arguments.model_dir = folder
        started = time.perf_counter()
        build_base(folder, arguments.tiny)
        print(f"base model written in {time.perf_counter() - started:.1f}s", flush=True)
        for name, arm in arms(arguments.pairs_per_step, arguments.tiny).items():
            micro = arm.micro_batch
            while True:
                if arguments.tiny:  # CPU: no GPU memory to isolate, spare two interpreters
                    result = run_arm(arm, folder, arguments.steps, arguments.pairs_per_step, True)
                    break
                result = run_child(arguments, name, micro)
                if "error" not in result or not result.get("out_of_memory") or micro <= 1:
                    break
                micro //= 2
                print(f"{name}: out of memory, retrying with micro-batch {micro}", flush=True)
            if "error" in result:
                print(f"{name} failed:\n{result['error']}", file=sys.stderr)
                return 1
            results.append(result)
            print(f"{name}: {result['tokens_per_second']:.1f} tokens/s", flush=True)
    print()
    print(
        f"device: {results[0]['device']}; {arguments.steps} steps of "
        f"{arguments.pairs_per_step} pairs per arm, the first one a warm-up"
    )
    print_table(results)
    paper, ours = results
    ratio = ours["tokens_per_second"] / paper["tokens_per_second"]
    if paper["device"] == "cpu":  # one process ran both arms: its peak RSS is shared
        print(f"\nours / paper: {ratio:.2f}x tokens/s")
    else:
        memory = ours["peak_memory_gib"] / paper["peak_memory_gib"]
        print(f"\nours / paper: {ratio:.2f}x tokens/s, {memory:.2f}x peak GPU memory")
    if ours["packed_vs_padded_max_rel_diff"] is not None:
        print(
            f"packed vs padded log-probs, max relative difference: "
            f"{ours['packed_vs_padded_max_rel_diff']:.2e}"
        )
    if arguments.json:
        with open(arguments.json, "w") as handle:
            json.dump({"results": results, "ratio_tokens_per_second": ratio}, handle, indent=2)
    return 0 if math.isfinite(ratio) else 1


if __name__ == "__main__":
    sys.exit(main())
