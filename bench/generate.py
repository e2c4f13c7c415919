"""Generation speed of the default policy (SmolLM2-135M-Instruct, float32, CPU): role-played
patient dialogues per minute and generated tokens per second at several batch sizes, beside a
same-run baseline at batch 1, and the same batch re-rendering the whole chat every turn (what
the continued KV cache saves). Nothing is cached: every dialogue is generated. Personas are the
first of ``synthlabs/prompts_test.csv``; the degenerate fraction and a few dialogues are printed
for the largest batch.

    .venv/bin/python bench/generate.py                                  # batches 1, 8, 32
    .venv/bin/python bench/generate.py --batch-sizes 1 16 64 --turns 3 --max-new-tokens 32
    .venv/bin/python bench/generate.py --rerender-baseline --examples 3
    .venv/bin/python bench/generate.py --batch-sizes 32 --samples 4    # the demo's train set

The machine's load average is printed: other processes on two cores slow every figure. Set
OMP_WAIT_POLICY=PASSIVE (flows/ does) on a shared machine: spinning OpenMP threads made
generate 10x slower here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from hal_core.dialogue_generation import (  # noqa: E402
    GenerationSpec,
    build_jobs,
    clean_patient_turn,
    degenerate_reason,
    roleplay_batch,
)
from hal_core.doctor_script import DoctorScript  # noqa: E402
from hal_core.generation import SamplingSettings, complete_chats, load_policy  # noqa: E402
from hal_core.personas import load_persona_prompts  # noqa: E402
from hal_core.policy_model import (  # noqa: E402
    DEFAULT_POLICY_MODEL,
    policy_model_record,
    resolve_policy_model,
)
from hal_core.settings import HalSettings  # noqa: E402


def rerender_batch(model, tokenizer, jobs, spec):
    """Baseline: every turn re-encodes the whole chat (card, doctor lines, cleaned replies)."""
    chats = [[{"role": "system", "content": job.system}] for job in jobs]
    tokens = 0
    for turn in range(spec.n_turns):
        for chat, job in zip(chats, jobs, strict=True):
            chat.append({"role": "user", "content": job.doctor_lines[turn]})
        replies = complete_chats(
            model, tokenizer, chats, [job.turn_seed(spec.seed, turn) for job in jobs], spec.sampling
        )
        for chat, job, reply in zip(chats, jobs, replies, strict=True):
            text, _ = clean_patient_turn(reply.text, job.persona, reply.finished)
            chat.append({"role": "assistant", "content": text})
            tokens += reply.new_tokens
    return tokens


def timed(label, run, n_dialogues):
    started, cpu = time.perf_counter(), time.process_time()
    tokens, dialogues = run()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(
        f"{label:<34} {n_dialogues:>4} dialogues {wall:7.1f} s (cpu {cpu:6.1f} s)  "
        f"{tokens / wall:6.1f} tokens/s  {60 * n_dialogues / wall:6.1f} dialogues/min",
        flush=True,
    )
    return tokens / wall, dialogues


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--dialogues", type=int, default=None, help="Per batch size (>= batch).")
    parser.add_argument("--samples", type=int, default=1, help="Dialogues per persona.")
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--repetition-penalty", type=float, default=1.1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dtype", default="float32", help="float32 or int8-dynamic.")
    parser.add_argument("--rerender-baseline", action="store_true")
    parser.add_argument("--examples", type=int, default=2)
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = HalSettings()
    print(f"load average {os.getloadavg()}, torch threads {torch.get_num_threads()}")
    started = time.perf_counter()
    folder = resolve_policy_model(DEFAULT_POLICY_MODEL, settings.home_dir / "models")
    resolved = time.perf_counter() - started
    record = policy_model_record(folder)
    print(
        f"policy {folder}: resolved in {resolved:.1f} s (conversion took "
        f"{record['conversion_seconds']} s when it ran), {record['n_parameters']:,} parameters"
    )
    started = time.perf_counter()
    model, tokenizer = load_policy(folder, dtype=args.dtype)
    print(f"loaded ({args.dtype}) in {time.perf_counter() - started:.1f} s")

    script = DoctorScript.load(ROOT / "infra" / "doctor_scripts" / "visit-v1.yaml")
    prompts = settings.data_path("synthlabs/prompts_test.csv")
    results, largest = {}, None
    for batch_size in args.batch_sizes:
        count = max(args.dialogues or batch_size, batch_size)
        personas = load_persona_prompts(prompts, limit=-(-count // args.samples))
        spec = GenerationSpec(
            n_turns=args.turns,
            sampling=SamplingSettings(
                n_candidates=args.samples,
                max_new_tokens=args.max_new_tokens,
                temperature=args.temperature,
                repetition_penalty=args.repetition_penalty,
                batch_size=batch_size,
            ),
        )
        jobs = build_jobs(personas, spec, "bench", script)[:count]

        def cached_run(jobs=jobs, spec=spec, batch_size=batch_size):
            out = []
            for start in range(0, len(jobs), batch_size):
                out += roleplay_batch(model, tokenizer, jobs[start : start + batch_size], spec)
            return sum(d.new_tokens for d in out), out

        speed, dialogues = timed(f"batch {batch_size:>3}, continued KV cache", cached_run, count)
        results[batch_size] = speed
        largest = (jobs, dialogues)
        if args.rerender_baseline and batch_size > 1:

            def rerender(jobs=jobs, spec=spec, batch_size=batch_size):
                tokens = 0
                for start in range(0, len(jobs), batch_size):
                    tokens += rerender_batch(
                        model, tokenizer, jobs[start : start + batch_size], spec
                    )
                return tokens, None

            base, _ = timed(f"batch {batch_size:>3}, chat re-rendered per turn", rerender, count)
            print(f"  continued cache / re-rendered: {speed / base:.2f}x tokens/s")
    if 1 in results:
        for batch_size, speed in results.items():
            print(f"batch {batch_size:>3}: {speed / results[1]:.2f}x the tokens/s of batch 1")
    jobs, dialogues = largest
    reasons = Counter(degenerate_reason(d.patient_turns, d.issues) or "ok" for d in dialogues)
    words = [len(" ".join(d.patient_turns).split()) / args.turns for d in dialogues]
    truncated = sum("truncated" in d.issues for d in dialogues)
    print(
        f"{len(dialogues)} dialogues of the last batch size: {dict(reasons)}; "
        f"{sum(words) / len(words):.1f} patient words per turn; "
        f"{truncated} with a turn cut at {args.max_new_tokens} tokens"
    )
    for job, dialogue in list(zip(jobs, dialogues, strict=True))[: args.examples]:
        reason = degenerate_reason(dialogue.patient_turns, dialogue.issues) or "ok"
        print(f"\n--- persona {job.persona.persona_id} ({job.persona.condition}; {reason})")
        print(dialogue.dialogue)
    print(f"\nload average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
