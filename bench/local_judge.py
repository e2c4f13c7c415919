"""Local judge speed: doctor's-visit dialogues per second in batch and single-dialogue latency
(p50/p95), beside the recorded API judge (GPT-5's median ``elapsed_time`` per dialogue in
``aligned_outputs``). Dialogues are ``synthlabs/candidates_test.csv`` (none is in the training
data); nothing is cached: every dialogue is parsed, featurized and encoded by MiniLM.

    .venv/bin/python bench/local_judge.py                          # fits a quick HAL16Q judge
    .venv/bin/python bench/local_judge.py --model .hal/local_judges/<run_id>
    .venv/bin/python bench/local_judge.py --model models:/hal-judge-local@hal16q --threads 2

Targets (issue 5): >= 50 dialogues/s in batch, p50 <= 50 ms, >= 500x below the API median.
The machine's load average is printed: other processes on two cores slow every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from hal_core.dialogue import SpeakerTags  # noqa: E402
from hal_core.local_judge import LocalJudge  # noqa: E402
from hal_core.settings import HalSettings  # noqa: E402


def load_judge(model: str | None, settings: HalSettings, threads: int | None) -> LocalJudge:
    """A saved judge folder, a registry URI, or (none given) a HAL16Q judge fitted on 300
    aligned dialogues (speed does not depend on how much it was trained on)."""
    if model and model.startswith(("models:/", "runs:/")):
        import mlflow

        from tasks.tracking import configure_tracking

        configure_tracking(settings)
        judge = mlflow.pyfunc.load_model(model).unwrap_python_model().judge
    elif model:
        judge = LocalJudge.load(model)
    else:
        judge = _quick_judge(settings)
    judge.featurizer.cache = None
    judge.featurizer.threads = threads
    return judge


def _quick_judge(settings: HalSettings) -> LocalJudge:
    from hal_core.embedding import EmbeddingCache
    from hal_core.features import DialogueFeaturizer, FeatureConfig
    from hal_core.local_judge import (
        TrainingSet,
        TraitRegressorConfig,
        aligned_rating_rows,
        average_ratings_by_dialogue,
        fit_judge,
        hal16q_paper_reward,
        hal16q_published,
    )
    from hal_core.tables import read_table

    data = settings.require_data_dir()
    questionnaire = hal16q_published(data / "questionnaires/hal16q_published.json")
    tables = {
        str(p.relative_to(data / "aligned_outputs")): read_table(p)
        for p in sorted(data.glob("aligned_outputs/*/samples_epoch_*_scored_gpt-5.csv"))[:6]
    }
    rows = aligned_rating_rows(tables, questionnaire)
    frame = average_ratings_by_dialogue(rows, questionnaire.trait_ids).head(300)
    training = TrainingSet("hal16q", questionnaire, SpeakerTags.doctor_visit(), frame, "prompt")
    cache = EmbeddingCache(settings.home_dir / "cache" / "embeddings.sqlite")
    features = FeatureConfig()
    matrix = DialogueFeaturizer(features, cache=cache).transform(training.dialogues, training.tags)
    reward = hal16q_paper_reward(data / "hal16_weights_paper.json", questionnaire)
    return fit_judge(training, matrix, features, TraitRegressorConfig(), reward)


def api_latency(settings: HalSettings) -> dict[str, float]:
    """Recorded LLM-judge seconds per dialogue (aligned_outputs, GPT-5, HAL16Q)."""
    data = settings.require_data_dir()
    times = pd.concat(
        pd.read_csv(p, usecols=["elapsed_time"])
        for p in sorted(data.glob("aligned_outputs/*/samples_epoch_*_scored_gpt-5.csv"))
    )["elapsed_time"]
    return {"median_s": float(times.median()), "p95_s": float(times.quantile(0.95))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="Judge folder or models:/ URI.")
    parser.add_argument("--n", type=int, default=400, help="Dialogues in the batch run.")
    parser.add_argument("--single", type=int, default=100, help="Single-dialogue calls.")
    parser.add_argument("--repeats", type=int, default=3, help="Batch runs (best is kept).")
    parser.add_argument("--threads", type=int, default=1, help="Torch threads (0 = default).")
    args = parser.parse_args()

    settings = HalSettings()
    judge = load_judge(args.model, settings, args.threads or None)
    texts = pd.read_csv(settings.data_path("synthlabs/candidates_test.csv"))["dialogue"]
    dialogues = texts.astype(str).tolist()
    tags = SpeakerTags.doctor_visit()
    judge.predict_frame(dialogues[:16], tags)  # warm-up: loads MiniLM, tokenizer, vocabulary

    batch = dialogues[: args.n]
    rates = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        frame = judge.predict_frame(batch, tags)
        rates.append(len(batch) / (time.perf_counter() - started))
    failed = int(frame["error"].notna().sum())

    pool = dialogues[args.n : args.n + args.single] or dialogues[: args.single]
    latencies = []
    for text in pool:
        started = time.perf_counter()
        judge.predict_frame([text], tags)
        latencies.append(time.perf_counter() - started)
    p50, p95 = (float(np.quantile(latencies, q)) for q in (0.5, 0.95))
    api = api_latency(settings)
    report = {
        "judge": judge.fingerprint(),
        "questionnaire": judge.questionnaire_id,
        "torch_threads": args.threads or "default",
        "features": judge.features.model_dump(),
        "batch_dialogues": len(batch),
        "batch_dialogues_per_s_best": max(rates),
        "batch_dialogues_per_s_median": float(np.median(rates)),
        "batch_unrateable": failed,
        "single_p50_ms": p50 * 1e3,
        "single_p95_ms": p95 * 1e3,
        "api_median_s": api["median_s"],
        "api_p95_s": api["p95_s"],
        "speedup_single_p50_vs_api_median": api["median_s"] / p50,
        "speedup_batch_vs_api_median": api["median_s"] * max(rates),
        "load_average_1m": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(report, indent=2))
    ok = report["batch_dialogues_per_s_best"] >= 50 and report["single_p50_ms"] <= 50
    print(
        f"local judge: {max(rates):.1f} dialogues/s (batch of {len(batch)}), single p50 "
        f"{p50 * 1e3:.1f} ms / p95 {p95 * 1e3:.1f} ms; API judge median {api['median_s']:.1f} s "
        f"-> {report['speedup_single_p50_vs_api_median']:.0f}x faster per dialogue "
        f"[{'meets' if ok else 'misses'} >= 50/s and p50 <= 50 ms]"
    )


if __name__ == "__main__":
    main()
