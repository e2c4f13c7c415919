"""Local-model judge speed: one full forward pass per (dialogue, trait) against one pass per
dialogue whose key/value cache serves every trait (``share_prefix``), measured in one run on
the same model, dialogues and questionnaire, with the largest difference in expected ratings.

    .venv/bin/python bench/hf_judge.py                         # Llama-shaped model from a config
    .venv/bin/python bench/hf_judge.py --model path/to/local/model --dialogues 16

The default model is randomly initialised (nothing is downloaded) with a tokenizer trained on
our dialogues; its ratings mean nothing, its cost per token is what a real model of its shape
costs.
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
from hal_core.questionnaire import Questionnaire  # noqa: E402
from hal_core.settings import HalSettings  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="local model folder; default: built here")
    parser.add_argument("--dialogues", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()

    import pandas as pd
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    settings = HalSettings()
    questionnaire = Questionnaire.load(settings.data_path("questionnaires/hal32q.json"))
    texts = pd.read_csv(settings.data_path("turing/ratings32_gpt-5.csv"))[
        "conversation_A_transcript"
    ]
    dialogues = [t for t in dict.fromkeys(texts.dropna()) if "\nW:" in t][: args.dialogues]
    with tempfile.TemporaryDirectory() as folder:
        model_path = args.model
        if model_path is None:
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
            corpus = [*texts.dropna().tolist()[:500], *(t.text for t in questionnaire.traits)]
            model_path = str(save_tiny_model(Path(folder) / "model", corpus, spec))
        timings, results = {}, {}
        for share in (False, True, False, True):  # interleaved: each arm measured twice
            judge = build_judge(
                HFJudgeConfig(model_path=model_path, batch_size=args.batch_size, share_prefix=share)
            )
            started = time.perf_counter()
            results[share] = judge.rate(dialogues, questionnaire, SpeakerTags.turing())
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
        "model": model_path
        if args.model
        else f"random Llama, hidden {args.hidden_size}, {args.layers} layers",
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
