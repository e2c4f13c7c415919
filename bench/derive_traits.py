"""Benchmark of the ``derive_traits`` flow: cold run (empty embedding cache) vs warm rerun.

    .venv/bin/python bench/derive_traits.py                      # statements_gpt-5.csv
    .venv/bin/python bench/derive_traits.py --statements-file turing/statements_gpt-5-mini.csv
    .venv/bin/python bench/derive_traits.py --no-warmup          # imports + JIT in cold

The runs share a fresh temporary HAL_HOME (embedding cache, MLflow store) and a throwaway
Prefect API, in one process. By default the heavy imports (Great Expectations, matplotlib)
and the numba code of UMAP and HDBSCAN are warmed up first on a small synthetic set (timed
and printed apart), so cold and warm differ by the embedding cache: the cold run loads the
sentence encoder and embeds every statement, the warm rerun reads every vector from the
cache and re-embeds nothing. A third run also reuses the stored UMAP layouts (the default,
``cache_layouts``); the second recomputes them, so it isolates the embedding cache.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--statements-file", default="turing/statements_gpt-5.csv")
    parser.add_argument(
        "--no-warmup", action="store_true", help="count imports and JIT compile in the cold run"
    )
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="hal-bench-") as home:
        os.environ["HAL_HOME"] = home
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        os.environ.pop("HAL_TRACKING_URI", None)
        from prefect.testing.utilities import prefect_test_harness

        from flows.derive_traits import DeriveTraitsParams, derive_traits

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
        f"{int(metrics['n_traits'])} traits"
    )
    shown = ("coverage.n_at_0.70", "coverage.n_at_0.60", "stability.ari_mean", "n_clusters")
    print("  ".join(f"{name} {metrics[name]:.3g}" for name in shown if name in metrics))
    print(f"cold run (empty caches):                     {cold:7.1f} s")
    print(f"warm rerun (embeddings cached):              {warm:7.1f} s  {cold / warm:5.2f}x")
    print(f"warm rerun (embeddings + layouts cached):    {warmest:7.1f} s  {cold / warmest:5.2f}x")


if __name__ == "__main__":
    main()
