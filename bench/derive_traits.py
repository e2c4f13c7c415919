"""Benchmark of the ``derive_traits`` flow: cold vs warm runs, coverage by seed, two processes.

    .venv/bin/python bench/derive_traits.py                      # statements_gpt-5.csv
    .venv/bin/python bench/derive_traits.py --statements-file turing/statements_gpt-5-mini.csv
    .venv/bin/python bench/derive_traits.py --no-warmup          # imports + JIT in cold
    .venv/bin/python bench/derive_traits.py --skip-processes     # no two-process check

The runs share a fresh temporary HAL_HOME (embedding cache, MLflow store) and a throwaway
Prefect API, in one process. By default the heavy imports (Great Expectations, matplotlib)
and the numba code of UMAP and HDBSCAN are warmed up first on a small synthetic set (timed
and printed apart), so cold and warm differ by the embedding cache: the cold run loads the
sentence encoder and embeds every statement, the warm rerun reads every vector from the
cache and re-embeds nothing. A third run also reuses the stored UMAP layouts (the default,
``cache_layouts``); the second recomputes them, so it isolates the embedding cache.

Then it prints the exact figures the tests only bound: coverage of HAL32Q by each seeded
run's questionnaire over ``--coverage-seeds`` (default 0-9), and the determinism check on the
whole file: two child processes derive the questionnaire from scratch (no cache), one with
every thread pool at one thread, the other with two threads and other CPU kernels (torch's
scalar kernels, MKL and oneDNN held to SSE, OpenBLAS's Prescott kernels), and their JSON
hashes must match.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}
OTHER_MACHINE = {
    "OMP_NUM_THREADS": "2",
    "MKL_NUM_THREADS": "2",
    "OPENBLAS_NUM_THREADS": "2",
    "NUMBA_NUM_THREADS": "2",
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "OPENBLAS_CORETYPE": "Prescott",
}


def warm_up_process() -> float:
    """Import the heavy libraries and compile UMAP's and HDBSCAN's numba code on 200
    synthetic points: one-off costs of a process, not of a run; seconds taken."""
    start = time.perf_counter()
    import great_expectations  # noqa: F401
    import matplotlib.pyplot  # noqa: F401

    from hal_core import derivation

    points = derivation.unit_rows(np.random.default_rng(0).normal(size=(200, 16)))
    recipe = derivation.DerivationRecipe()
    neighbours = derivation.exact_neighbours(points, recipe.umap.n_neighbors)
    derivation.cluster_statements(points, recipe, 0, neighbours)
    derivation.project(points, neighbours, recipe.umap, 0, n_components=2)
    return time.perf_counter() - start


def child(statements_path: str, output: str) -> None:
    """One whole default recipe from scratch; prints the questionnaire's hash as JSON."""
    import torch

    from hal_core.derivation import DerivationRecipe, collect_statements, derive_questionnaire
    from hal_core.tables import read_table

    start = time.perf_counter()
    run = derive_questionnaire(collect_statements(read_table(statements_path)), DerivationRecipe())
    text = run.derivation.questionnaire.to_json()
    Path(output).write_text(text, encoding="utf-8")
    print(
        json.dumps(
            {
                "sha256": hashlib.sha256(text.encode()).hexdigest(),
                "version": run.derivation.questionnaire.version,
                "n_traits": len(run.derivation.questionnaire.traits),
                "main_seed": run.derivation.main.seed,
                "seconds": round(time.perf_counter() - start, 1),
                "torch": f"{torch.get_num_threads()} threads, "
                f"{torch.backends.cpu.get_cpu_capability()}",
            }
        )
    )


def two_processes(statements_path: Path, folder: Path) -> None:
    """Run :func:`child` under both environments at once and print whether they agree."""
    children = {}
    for label, settings in (("one thread", ONE_THREAD), ("other kernels", OTHER_MACHINE)):
        environment = {k: v for k, v in os.environ.items() if k not in OTHER_MACHINE} | settings
        output = folder / f"{label.replace(' ', '_')}.json"
        children[label] = (
            subprocess.Popen(
                [sys.executable, __file__, "--child", str(statements_path), str(output)],
                env=environment,
                stdout=subprocess.PIPE,
                text=True,
            ),
            output,
        )
    results = {}
    for label, (process, _) in children.items():
        stdout, _ = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"{label} child failed with exit code {process.returncode}")
        results[label] = json.loads(stdout.strip().splitlines()[-1])
        print(f"{label:>14}: {results[label]}")
    same = len({output.read_bytes() for _, output in children.values()}) == 1
    print(f"questionnaire JSON byte-identical across the two processes: {same}")
    if not same:
        raise SystemExit(1)


def coverage_over_seeds(statements_path: Path, seeds: list[int]) -> None:
    """Coverage of HAL32Q by each seeded run's extractive questionnaire (cached vectors)."""
    from hal_core import derivation as core
    from hal_core.embedding import embed_exact
    from hal_core.questionnaire import Questionnaire
    from hal_core.settings import get_settings
    from hal_core.tables import read_table
    from tasks.derivation import embedding_cache

    settings = get_settings()
    cache = embedding_cache(settings)
    recipe = core.DerivationRecipe(seeds=seeds)
    run = core.derive_questionnaire(
        core.collect_statements(read_table(statements_path)), recipe, cache
    )
    reference = Questionnaire.load(settings.data_path("questionnaires/hal32q.json"))
    reference_vectors = embed_exact([t.text for t in reference.traits], cache)
    texts = run.statements["text"].tolist()
    table = core.coverage_by_seed(
        run.runs, run.embeddings, texts, recipe, reference, reference_vectors
    )
    print(f"\ncoverage of HAL32Q by each seed's questionnaire (seeds {seeds[0]}-{seeds[-1]}):")
    print(table.to_string(index=False))
    summary = table.drop(columns="seed").agg(["min", "mean", "max"]).round(2)
    print(summary.to_string())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--statements-file", default="turing/statements_gpt-5.csv")
    parser.add_argument(
        "--no-warmup", action="store_true", help="count imports and JIT compile in the cold run"
    )
    parser.add_argument("--coverage-seeds", default="0-9", help="first-last seed")
    parser.add_argument("--skip-processes", action="store_true", help="no two-process check")
    parser.add_argument(
        "--child", nargs=2, metavar=("STATEMENTS", "OUTPUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="hal-bench-") as home:
        os.environ["HAL_HOME"] = home
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        os.environ.pop("HAL_TRACKING_URI", None)
        from prefect.testing.utilities import prefect_test_harness

        from flows.derive_traits import DeriveTraitsParams, derive_traits
        from hal_core.settings import get_settings

        params = DeriveTraitsParams(statements_file=args.statements_file)
        with prefect_test_harness(server_startup_timeout=120):
            if not args.no_warmup:
                print(f"process warm-up (not counted): {warm_up_process():.1f} s", flush=True)
            timings = []
            runs = (
                ("cold", params),
                ("warm, embeddings cached", params.model_copy(update={"cache_layouts": False})),
                ("warm, embeddings and UMAP layouts cached", params),
            )
            for label, run_params in runs:
                start = time.perf_counter()
                result = derive_traits(run_params)
                timings.append(time.perf_counter() - start)
                print(f"{label}: {timings[-1]:.1f} s  version {result.questionnaire_version}")
        cold, warm, warmest = timings
        metrics = result.metrics
        print(
            f"\n{args.statements_file}: {int(metrics['n_statements'])} statements, "
            f"{int(metrics['n_traits'])} traits (main seed {int(metrics['main_seed'])})"
        )
        shown = [name for name in metrics if name.startswith(("coverage", "stability.ari_mean"))]
        print("  ".join(f"{name} {metrics[name]:.3g}" for name in shown))
        print(f"cold run (empty caches):                     {cold:7.1f} s")
        print(f"warm rerun (embeddings cached):              {warm:7.1f} s  {cold / warm:5.2f}x")
        print(
            f"warm rerun (embeddings + layouts cached):    {warmest:7.1f} s  {cold / warmest:5.2f}x"
        )
        statements_path = get_settings().input_path(args.statements_file)
        first, last = (int(seed) for seed in args.coverage_seeds.split("-"))
        coverage_over_seeds(statements_path, list(range(first, last + 1)))
        if not args.skip_processes:
            print("\nthe default recipe from scratch in two processes (threads, CPU kernels):")
            two_processes(statements_path, Path(home))


if __name__ == "__main__":
    main()
