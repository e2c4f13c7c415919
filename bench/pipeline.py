"""Benchmark of the end-to-end pipeline as `make demo` runs it: stage times, then a rerun.

    python bench/pipeline.py          # cold run in a fresh HAL_HOME, then a warm (cached) rerun

Prints each stage's wall time (from its nested MLflow run), the total, and the rerun's time
with the stages it skipped.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import yaml

RECIPE = Path(__file__).resolve().parents[1] / "infra" / "recipes" / "pipeline.yaml"


def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        os.environ["HAL_HOME"] = home
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        import mlflow
        from mlflow.tracking import MlflowClient

        from flows.pipeline import PipelineParams, hal_pipeline
        from hal_core.recipes import params_from_recipe
        from hal_core.settings import get_settings

        params = params_from_recipe(PipelineParams, yaml.safe_load(RECIPE.read_text()))
        start = time.perf_counter()
        cold = hal_pipeline(params)
        cold_seconds = time.perf_counter() - start
        start = time.perf_counter()
        warm = hal_pipeline(params)
        warm_seconds = time.perf_counter() - start

        mlflow.set_tracking_uri(get_settings().resolved_tracking_uri())
        client = MlflowClient()
        parent = client.get_run(cold.run_id)
        children = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{cold.run_id}'",
            order_by=["start_time ASC"],
        )
        print(f"{'stage':<34} seconds")
        for run in children:
            print(
                f"{run.info.run_name:<34} {(run.info.end_time - run.info.start_time) / 1000:8.1f}"
            )
        print(f"{'pipeline (cold, all stages)':<34} {cold_seconds:8.1f}")
        print(f"{'pipeline (rerun, nothing changed)':<34} {warm_seconds:8.1f}")
        print(f"stages skipped by cache on rerun: {len(warm.cached)}/{len(warm.stages)}")
        print(f"cold / rerun: {cold_seconds / warm_seconds:.1f}x")


if __name__ == "__main__":
    main()
