"""Local judge speed: doctor's-visit dialogues per second in batch and single-dialogue latency
(p50/p95), for the judge's features and, in the same run, for the issue-5 features (one MiniLM
window per dialogue) as the baseline, beside the recorded API judge (GPT-5's median
``elapsed_time`` per dialogue in ``aligned_outputs``). Dialogues are
``synthlabs/candidates_test.csv`` (none is in the training data); nothing is cached: every
dialogue is parsed, featurized and encoded by MiniLM.

    .venv/bin/python bench/local_judge.py                          # quick judges, as shipped
    .venv/bin/python bench/local_judge.py --model .hal/local_judges/<run_id>
    .venv/bin/python bench/local_judge.py --model models:/hal-judge-local@doctor_visit
    .venv/bin/python bench/local_judge.py --features '{"max_turns": 8}'   # another recipe
    .venv/bin/python bench/local_judge.py --threads 2              # two torch threads

Targets (issue 14, on 2 cores): >= 20 dialogues/s in batch, single-dialogue p50 <= 100 ms.
The machine's load average is printed: other processes on two cores slow every figure, which
is why the baseline runs in the same process, right after, and the ratio is printed.
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
from hal_core.features import FeatureConfig  # noqa: E402
from hal_core.local_judge import LocalJudge  # noqa: E402
from hal_core.settings import HalSettings  # noqa: E402

BASELINE_FEATURES = FeatureConfig(embedding_unit="window", max_chunks=1, batch_size=32)
"""The issue-5 default: one 32-piece MiniLM window per dialogue."""


def load_judge(model: str | None, settings: HalSettings, features: FeatureConfig) -> LocalJudge:
    """A saved judge folder, a registry URI, or (none given) a quick HAL16Q judge with
    ``features`` fitted on 300 aligned dialogues (speed does not depend on the training size)."""
    if model and model.startswith(("models:/", "runs:/")):
        import mlflow

        from tasks.tracking import configure_tracking

        configure_tracking(settings)
        return mlflow.pyfunc.load_model(model).unwrap_python_model().judge
    if model:
        return LocalJudge.load(model)
    return _quick_judge(settings, features)


def _quick_judge(settings: HalSettings, features: FeatureConfig) -> LocalJudge:
    from hal_core.embedding import EmbeddingCache
    from hal_core.features import DialogueFeaturizer
    from hal_core.local_judge import (
        TrainingSet,
        TraitRegressorConfig,
        aligned_rating_rows,
        average_ratings_by_dialogue,
        fit_judge,
        hal16q_reward,
    )
    from hal_core.paper import load_hal16q_published
    from hal_core.tables import read_table

    data = settings.require_data_dir()
    questionnaire = load_hal16q_published(data / "questionnaires/hal16q_published.json")
    tables = {
        str(p.relative_to(data)): read_table(p)
        for p in sorted(data.glob("aligned_outputs/*/samples_epoch_*_scored_gpt-5.csv"))[:6]
    }
    rows = aligned_rating_rows(tables, questionnaire)
    frame = average_ratings_by_dialogue(rows, questionnaire.trait_ids).head(300)
    training = TrainingSet("hal16q", questionnaire, SpeakerTags.doctor_visit(), frame, "prompt")
    cache = EmbeddingCache(settings.home_dir / "cache" / "embeddings.sqlite")
    matrix = DialogueFeaturizer(features, cache=cache).transform(training.dialogues, training.tags)
    reward = hal16q_reward(data / "hal16_weights_paper.json")
    return fit_judge(training, matrix, features, TraitRegressorConfig(), reward)


def api_latency(settings: HalSettings) -> dict[str, float]:
    """Recorded LLM-judge seconds per dialogue (aligned_outputs, GPT-5, HAL16Q)."""
    data = settings.require_data_dir()
    times = pd.concat(
        pd.read_csv(p, usecols=["elapsed_time"])
        for p in sorted(data.glob("aligned_outputs/*/samples_epoch_*_scored_gpt-5.csv"))
    )["elapsed_time"]
    return {"median_s": float(times.median()), "p95_s": float(times.quantile(0.95))}


def measure(
    judge: LocalJudge, batch: list[str], pool: list[str], repeats: int, threads: int | None
) -> dict[str, float]:
    """Best and median batch rate over ``repeats`` runs, and single-dialogue latencies
    (``threads``: torch threads while encoding; None keeps the judge's own setting)."""
    judge.featurizer.cache = None
    if threads is not None:
        judge.featurizer.threads = threads or None
    tags = SpeakerTags.doctor_visit()
    judge.predict_frame(batch[:16], tags)  # warm-up: loads MiniLM, tokenizer, vocabulary
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        frame = judge.predict_frame(batch, tags)
        rates.append(len(batch) / (time.perf_counter() - started))
    latencies = []
    for text in pool:
        started = time.perf_counter()
        judge.predict_frame([text], tags)
        latencies.append(time.perf_counter() - started)
    return {
        "batch_dialogues_per_s_best": max(rates),
        "batch_dialogues_per_s_median": float(np.median(rates)),
        "batch_unrateable": int(frame["error"].notna().sum()),
        "batch_out_of_domain": float(frame["out_of_domain"].mean()),
        "single_p50_ms": float(np.quantile(latencies, 0.5)) * 1e3,
        "single_p95_ms": float(np.quantile(latencies, 0.95)) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="Judge folder or models:/ URI.")
    parser.add_argument("--n", type=int, default=200, help="Dialogues in the batch run.")
    parser.add_argument("--single", type=int, default=60, help="Single-dialogue calls.")
    parser.add_argument("--repeats", type=int, default=3, help="Batch runs (best is kept).")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="Torch threads while encoding; default: the judge's own (one, as shipped: two "
        "threads on a busy two-core machine measured 2-6x slower); 0: torch's default.",
    )
    parser.add_argument(
        "--features", default="{}", help="FeatureConfig fields (JSON) of the quick judge."
    )
    args = parser.parse_args()

    settings = HalSettings()
    threads = args.threads
    judge = load_judge(args.model, settings, FeatureConfig(**json.loads(args.features)))
    baseline = _quick_judge(settings, BASELINE_FEATURES)
    texts = pd.read_csv(settings.data_path("synthlabs/candidates_test.csv"))["dialogue"]
    dialogues = texts.astype(str).tolist()
    batch = dialogues[: args.n]
    pool = dialogues[args.n : args.n + args.single] or dialogues[: args.single]
    figures = measure(judge, batch, pool, args.repeats, threads)
    reference = measure(baseline, batch, pool, args.repeats, threads)
    api = api_latency(settings)
    report = {
        "judge": judge.fingerprint(),
        "questionnaire": judge.questionnaire_id,
        "features": judge.features.model_dump(),
        "torch_threads": judge.featurizer.threads or "torch default",
        "batch_dialogues": len(batch),
        **figures,
        "baseline_features": BASELINE_FEATURES.model_dump(),
        **{f"baseline.{k}": v for k, v in reference.items()},
        "ratio_batch_vs_baseline": figures["batch_dialogues_per_s_best"]
        / reference["batch_dialogues_per_s_best"],
        "ratio_single_p50_vs_baseline": figures["single_p50_ms"] / reference["single_p50_ms"],
        "api_median_s": api["median_s"],
        "speedup_single_p50_vs_api_median": api["median_s"] / (figures["single_p50_ms"] / 1e3),
        "load_average_1m": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(report, indent=2))
    rate, p50 = figures["batch_dialogues_per_s_best"], figures["single_p50_ms"]
    ok = rate >= 20 and p50 <= 100
    print(
        f"local judge: {rate:.1f} dialogues/s (batch of {len(batch)}), single p50 {p50:.1f} ms "
        f"/ p95 {figures['single_p95_ms']:.1f} ms; baseline (one window) "
        f"{reference['batch_dialogues_per_s_best']:.1f}/s, p50 {reference['single_p50_ms']:.1f} "
        f"ms; API judge median {api['median_s']:.1f} s; load average "
        f"{report['load_average_1m']:.1f} [{'meets' if ok else 'misses'} >= 20/s and p50 <= 100 ms]"
    )


if __name__ == "__main__":
    main()
