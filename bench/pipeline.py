"""Benchmark of the end-to-end pipeline as `make demo` runs it: stage times, then a rerun.

    python bench/pipeline.py              # cold run in a fresh HAL_HOME, then a cached rerun
    python bench/pipeline.py --no-rerun   # the cold run only

Prints each stage's wall time (from its nested MLflow run), the total against the demo's
15-minute budget on 2 cores, the HL figures the demo reports, and the rerun's time with the
stages it skipped. Run it on an otherwise idle machine: the figures are wall-clock.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml

RECIPE = Path(__file__).resolve().parents[1] / "infra" / "recipes" / "pipeline.yaml"
BUDGET_S = 15 * 60


def stage_rows(client, run_id: str) -> list[tuple[str, float]]:
    """(run name, seconds) of the stage runs nested under the pipeline run, in start order."""
    runs = [
        run
        for experiment in client.search_experiments()
        for run in client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'"
        )
    ]
    runs.sort(key=lambda run: run.info.start_time)
    return [
        (run.info.run_name, (run.info.end_time - run.info.start_time) / 1000)
        for run in runs
        if run.info.end_time
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-rerun", action="store_true", help="Skip the cached rerun.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        os.environ["HAL_HOME"] = home
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        from hal_core.settings import apply_process_defaults

        apply_process_defaults()
        import mlflow
        from mlflow.tracking import MlflowClient

        from flows.pipeline import PipelineParams, hal_pipeline
        from hal_core.recipes import params_from_recipe
        from hal_core.settings import get_settings

        params = params_from_recipe(PipelineParams, yaml.safe_load(RECIPE.read_text()))
        start = time.perf_counter()
        cold = hal_pipeline(params)
        cold_seconds = time.perf_counter() - start

        mlflow.set_tracking_uri(get_settings().resolved_tracking_uri())
        client = MlflowClient()
        print(f"{'stage run':<34} seconds")
        for name, seconds in stage_rows(client, cold.run_id):
            print(f"{name:<34} {seconds:8.1f}")
        print(f"{'pipeline (cold, all stages)':<34} {cold_seconds:8.1f}")
        print(f"cold / 15-minute budget: {cold_seconds / BUDGET_S:.2f}")
        for key in ("hl.gain", "hl.gain.p", "second_judge.hl.gain", "guards.passed"):
            if key in cold.metrics:
                print(f"{key}: {cold.metrics[key]:.4f}")
        if args.no_rerun:
            return
        start = time.perf_counter()
        warm = hal_pipeline(params)
        warm_seconds = time.perf_counter() - start
        print(f"{'pipeline (rerun, nothing changed)':<34} {warm_seconds:8.1f}")
        print(f"stages skipped by cache on rerun: {len(warm.cached)}/{len(warm.stages)}")
        print(f"cold / rerun: {cold_seconds / warm_seconds:.1f}x")


if __name__ == "__main__":
    main()
