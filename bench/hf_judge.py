"""Local-model judge speed: one full forward pass per (dialogue, trait) against one pass per
dialogue whose key/value cache serves every trait (``share_prefix``), measured in one run on
the same model, dialogues and questionnaire, with the largest difference in expected ratings.

    .venv/bin/python bench/hf_judge.py                         # Llama-shaped model from a config
    .venv/bin/python bench/hf_judge.py --model path/to/local/model --dialogues 16
    python bench/hf_judge.py --shape llama-1b --device cuda --dtype bfloat16 --dialogues 64

The default model is randomly initialised (nothing is downloaded) with a tokenizer trained on
our dialogues; its ratings mean nothing, its cost per token is what a real model of its shape
costs. Its digit probabilities are nearly uniform, so in bfloat16 the rounding differences
between the two paths flip many near-tied ratings; a trained judge's peaked answers flip few.

Measured (figures in the closing note): this 2-core CPU, 4-layer 256-wide model, float32:
4.0x, identical ratings. NVIDIA H200, Llama-3.2-1B shape, bfloat16, 64 dialogues: 1.4x
(one dialogue per cached pass leaves the GPU underused), expected ratings within 0.06.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hal_core.dialogue import SpeakerTags  # noqa: E402
from hal_core.judges import HFJudgeConfig, build_judge  # noqa: E402
from hal_core.judges.hf_judge import HFJudge  # noqa: E402
from hal_core.questionnaire import Questionnaire  # noqa: E402

LLAMA_32_1B = {  # Llama-3.2-1B's shape (vocabulary: our tokenizer's)
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
}


def _in_memory_judge(corpus: list[str], shape: dict, config: HFJudgeConfig) -> HFJudge:
    """A randomly initialised Llama of ``shape`` built on the device, with our tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hal_core.tiny_model import train_tokenizer

    tokenizer = train_tokenizer(corpus, 8192)
    torch.manual_seed(0)
    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **shape,
    )
    with torch.device(config.device):
        model = LlamaForCausalLM(llama).to(getattr(torch, config.dtype)).eval()
    return HFJudge(model, tokenizer, config, model_digest="random-llama")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="local model folder; default: built here")
    parser.add_argument("--shape", choices=["small", "llama-1b"], default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--data-dir", default=None, help="default: the HAL data folder")
    parser.add_argument("--dialogues", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()

    import pandas as pd
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    if args.data_dir is None:
        from hal_core.settings import HalSettings

        data_dir = HalSettings().require_data_dir()
    else:
        data_dir = Path(args.data_dir)
    questionnaire = Questionnaire.load(data_dir / "questionnaires/hal32q.json")
    texts = pd.read_csv(data_dir / "turing/ratings32_gpt-5.csv")["conversation_A_transcript"]
    dialogues = [t for t in dict.fromkeys(texts.dropna()) if "\nW:" in t][: args.dialogues]
    corpus = [*texts.dropna().tolist()[:500], *(t.text for t in questionnaire.traits)]
    timings, results = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        model_path = args.model
        if model_path is None and args.shape == "small":
            from hal_core.tiny_model import TinyModelSpec, save_tiny_model

            spec = TinyModelSpec(
                vocab_size=4096,
                hidden_size=args.hidden_size,
                intermediate_size=4 * args.hidden_size,
                num_hidden_layers=args.layers,
                num_attention_heads=8,
                num_key_value_heads=2,
                max_position_embeddings=4096,
            )
            model_path = str(save_tiny_model(Path(folder) / "model", corpus, spec))
        judge = None
        for share in (False, True, False, True):  # interleaved: each arm measured twice
            config = HFJudgeConfig(
                model_path=model_path or "in-memory",
                batch_size=args.batch_size,
                share_prefix=share,
                device=args.device,
                dtype=args.dtype,
            )
            if model_path is not None:
                judge = build_judge(config)
            elif judge is None:
                judge = _in_memory_judge(corpus, LLAMA_32_1B, config)
            else:
                judge.config = config
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
            results[share] = judge.rate(dialogues, questionnaire, SpeakerTags.turing())
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            timings.setdefault(share, []).append(time.perf_counter() - started)
    full, shared = min(timings[False]), min(timings[True])
    gap = max(
        abs(a.expected[t] - b.expected[t])
        for a, b in zip(results[False], results[True], strict=True)
        for t in questionnaire.trait_ids
    )
    same = sum(a.ratings == b.ratings for a, b in zip(results[False], results[True], strict=True))
    report = {
        "dialogues": len(dialogues),
        "traits": len(questionnaire.traits),
        "model": args.model
        or (
            "random Llama-3.2-1B shape"
            if args.shape == "llama-1b"
            else f"random Llama, hidden {args.hidden_size}, {args.layers} layers"
        ),
        "device": args.device,
        "dtype": args.dtype,
        "full_prompts_s": round(full, 2),
        "shared_prefix_s": round(shared, 2),
        "speedup": round(full / shared, 2),
        "max_expected_rating_difference": gap,
        "dialogues_with_identical_ratings": same,
        "load_average_1m": os.getloadavg()[0],
    }
    print(json.dumps(report, indent=2))
    print(
        f"hf judge, {len(dialogues)} dialogues x {len(questionnaire.traits)} traits: full prompts "
        f"{full:.1f} s, shared prefix {shared:.1f} s -> {full / shared:.1f}x; expected ratings "
        f"differ by at most {gap:.1e}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
