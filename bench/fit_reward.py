"""Benchmark of the reward stage: the whole fit_reward flow and the paper's 200-fit CV alone.

    python bench/fit_reward.py            # prints wall times and their ratio

Runs against a throwaway HAL_HOME so the local store is untouched.
"""

from __future__ import annotations

import os
import tempfile
import time


def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        os.environ["HAL_HOME"] = home
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        from flows.fit_reward import FitRewardParams, fit_reward
        from hal_core.questionnaire import Questionnaire
        from hal_core.reward import RewardConfig, row_kfold_accuracies
        from hal_core.settings import get_settings
        from hal_core.tables import read_table, witness_ratings

        settings = get_settings()
        questionnaire = Questionnaire.load(settings.data_path("questionnaires/hal32q.json"))
        witnesses = witness_ratings(
            read_table(settings.data_path("turing/ratings32_gpt-5.csv")), questionnaire
        )
        config = RewardConfig()
        start = time.perf_counter()
        row_kfold_accuracies(
            witnesses[questionnaire.trait_ids],
            witnesses["is_human"].to_numpy(),
            config.C,
            config.cv_folds,
            config.paper_cv_seeds,
        )
        cv_seconds = time.perf_counter() - start

        start = time.perf_counter()
        fit_reward(FitRewardParams(register_as=None))
        flow_seconds = time.perf_counter() - start
    n_fits = config.cv_folds * len(config.paper_cv_seeds)
    print(f"paper CV ({n_fits} fits): {cv_seconds:.2f} s ({1000 * cv_seconds / n_fits:.1f} ms/fit)")
    print(f"fit_reward flow (validate, fit, 3 CV protocols, log): {flow_seconds:.2f} s")
    print(f"CV share of the flow: {cv_seconds / flow_seconds:.2f}")


if __name__ == "__main__":
    main()
