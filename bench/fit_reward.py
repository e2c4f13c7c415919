"""Reward models on the recorded Turing ratings: the curve of what was tried, and run times.

    python bench/fit_reward.py                        # both judges, fold seeds 0 1 2
    python bench/fit_reward.py --nested-stability     # + stable set chosen inside the folds
    python bench/fit_reward.py --flow                 # + the whole fit_reward flow, timed
    python bench/fit_reward.py --no-curve --flow      # the flow's run time only

Every model is scored on the same game-grouped 10-fold splits (a game's two witnesses on one
side), one split per fold seed; selection and any hyperparameter search happen inside the
training folds. ``acc`` is the share of witnesses on the right side of 0, ``paired`` the share
of games whose human witness scores higher. ``glass_box`` says whether HL stays a bias plus one
contribution per trait. The table is printed, written to ``--output`` and logged to MLflow
(experiment hal-reward, run ``bench_fit_reward``, artifact ``reward_curve.csv``) unless
``--no-mlflow``. Times are CPU seconds per model and judge, beside the L1 reward's (the
same-run baseline); the machine's load average is printed, as other processes slow every
figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from scipy.special import expit  # noqa: E402
from sklearn.base import BaseEstimator, ClassifierMixin  # noqa: E402
from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from hal_core.folds import grouped_folds  # noqa: E402
from hal_core.questionnaire import Questionnaire  # noqa: E402
from hal_core.reward import (  # noqa: E402
    PAPER_HAL16_TRAIT_IDS,
    TraitLogisticRegression,
    paired_accuracy,
    row_kfold_accuracies,
)
from hal_core.reward_comparison import GradientBoostedTraits  # noqa: E402
from hal_core.settings import get_settings  # noqa: E402
from hal_core.shape_reward import DEFAULT_CS, ShapeRewardRegression, thermometer  # noqa: E402
from hal_core.stability import StabilityConfig, stability_table, stable_set  # noqa: E402
from hal_core.tables import read_table, witness_ratings  # noqa: E402

JUDGES = ("gpt-5", "gpt-5-mini")


class _Coded(ClassifierMixin, BaseEstimator):
    """Logistic regression on a per-level coding of the ratings (bench variants only)."""

    def __init__(self, coding: str = "onehot", C: float = 0.1, standardise: bool = False):
        self.coding = coding
        self.C = C
        self.standardise = standardise

    def _code(self, X: pd.DataFrame) -> np.ndarray:
        values = X[sorted(X.columns)].to_numpy(float)
        if self.coding == "thermometer":
            return thermometer(values, (1, 5))
        return np.concatenate([(values == level) for level in range(1, 6)], axis=1).astype(float)

    def fit(self, X: pd.DataFrame, y) -> _Coded:
        coded = self._code(X)
        self.scaler_ = StandardScaler().fit(coded) if self.standardise else None
        coded = self.scaler_.transform(coded) if self.scaler_ else coded
        self.model_ = LogisticRegression(C=self.C, l1_ratio=0.0, solver="newton-cholesky")
        self.model_.fit(coded, np.asarray(y))
        return self

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        coded = self._code(X)
        return self.model_.decision_function(
            self.scaler_.transform(coded) if self.scaler_ else coded
        )


class _AdditiveTrees(ClassifierMixin, BaseEstimator):
    """Gradient boosting with no interactions: each tree splits on one trait (an additive model
    whose per-trait shapes can be read off; the EBM idea on scikit-learn)."""

    def fit(self, X: pd.DataFrame, y) -> _AdditiveTrees:
        self.columns_ = sorted(X.columns)
        self.model_ = HistGradientBoostingClassifier(
            interaction_cst="no_interactions", learning_rate=0.05, max_iter=200, random_state=0
        )
        with threadpool_limits(1, user_api="openmp"):
            self.model_.fit(X[self.columns_].to_numpy(float), np.asarray(y))
        return self

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        with threadpool_limits(1, user_api="openmp"):
            return self.model_.decision_function(X[self.columns_].to_numpy(float))


class _PairTerms(ClassifierMixin, BaseEstimator):
    """Shape reward plus ``k`` pairwise 5x5 interaction tables (GA2M): NOT a sum of per-trait
    contributions. Pairs are ranked, inside the training fold, by how much a 5x5 table of the
    shape model's residuals explains (FAST, Lou et al. 2013)."""

    def __init__(self, k: int = 3, C: float = 0.01):
        self.k = k
        self.C = C

    def _code(self, X: pd.DataFrame) -> np.ndarray:
        values = X[self.columns_].to_numpy(int)
        parts = [thermometer(values.astype(float), (1, 5))]
        for i, j in self.pairs_:
            cells = np.zeros((len(values), 25))
            cells[np.arange(len(values)), (values[:, i] - 1) * 5 + values[:, j] - 1] = 1
            parts.append(cells)
        return np.hstack(parts)

    def fit(self, X: pd.DataFrame, y) -> _PairTerms:
        y = np.asarray(y)
        self.columns_ = sorted(X.columns)
        self.pairs_ = []
        residual = y - expit(ShapeRewardRegression(C=self.C).fit(X, y).decision_function(X))
        values = X[self.columns_].to_numpy(int)
        gains = {}
        for i in range(values.shape[1]):
            for j in range(i + 1, values.shape[1]):
                cells = (values[:, i] - 1) * 5 + values[:, j] - 1
                sums = np.bincount(cells, residual, 25)
                gains[(i, j)] = float((sums**2 / (np.bincount(cells, minlength=25) + 10)).sum())
        self.pairs_ = sorted(gains, key=gains.get, reverse=True)[: self.k]
        coded = self._code(X)
        self.scaler_ = StandardScaler().fit(coded)
        self.model_ = LogisticRegression(C=self.C, l1_ratio=0.0, solver="newton-cholesky")
        self.model_.fit(self.scaler_.transform(coded), y)
        return self

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        return self.model_.decision_function(self.scaler_.transform(self._code(X)))


def _variants(stable: list[str]) -> list[tuple[str, bool, str, Callable, list[str] | None]]:
    """(name, glass box, selection, factory, fixed trait ids or None = all 32)."""
    l1 = TraitLogisticRegression
    rows = [
        ("l1 (paper: |w|>0.2, refit)", True, "in folds", l1, None),
        ("l1 on the paper's 16", True, "fixed, all data", lambda: l1(selection_threshold=None),
         list(PAPER_HAL16_TRAIT_IDS)),
        ("l1 on the stable set", True, "fixed, all data", lambda: l1(selection_threshold=None),
         stable),
        ("one-hot levels, ridge C=0.1", True, "none", lambda: _Coded("onehot", 0.1), None),
        ("thermometer, ridge C=0.1", True, "none", lambda: _Coded("thermometer", 0.1), None),
    ]  # fmt: skip
    for C in DEFAULT_CS:
        rows.append((f"shape C={C:g}", True, "none", lambda C=C: ShapeRewardRegression(C=C), None))
    rows += [
        ("shape C by inner CV", True, "C in folds", lambda: ShapeRewardRegression(C=None), None),
        ("additive trees (no interactions)", True, "none", _AdditiveTrees, None),
        ("hgb (black box)", False, "none", GradientBoostedTraits, None),
        ("shape + 3 pair terms (GA2M)", False, "pairs in folds", lambda: _PairTerms(3), None),
        ("shape + 10 pair terms (GA2M)", False, "pairs in folds", lambda: _PairTerms(10), None),
    ]
    return rows


def _fit(model, X, y, groups):
    if isinstance(model, ShapeRewardRegression):
        return model.fit(X, y, groups=groups)
    return model.fit(X, y)


def _evaluate(make, X, y, games, folds) -> tuple[np.ndarray, float]:
    scores = np.full(len(X), np.nan)
    start = time.process_time()
    for train, test in folds:
        model = _fit(make(), X.iloc[train], y[train], games[train])
        scores[test] = model.decision_function(X.iloc[test])
    return scores, time.process_time() - start


def _nested_stable(judges, trait_ids, folds, config) -> dict[str, np.ndarray]:
    """Out-of-fold L1 scores on a stable set chosen on the training games of every judge.

    ``folds`` split the first judge's rows; every judge's rows follow their games.
    """
    scores = {judge: np.full(len(frame), np.nan) for judge, frame in judges.items()}
    reference = judges[next(iter(judges))]["game_id"].to_numpy()
    for _, test in folds:
        held_out = set(reference[test])
        table = stability_table(
            {j: f[~f.game_id.isin(held_out)] for j, f in judges.items()}, trait_ids, config
        )
        stable = stable_set(table, config.threshold)
        for judge, frame in judges.items():
            out = frame["game_id"].isin(held_out).to_numpy()
            model = TraitLogisticRegression(selection_threshold=None)
            model.fit(frame.loc[~out, stable], frame["is_human"].to_numpy()[~out])
            scores[judge][out] = model.decision_function(frame.loc[out, stable])
    return scores


def curve(fold_seeds: list[int], nested: bool) -> tuple[pd.DataFrame, list[str]]:
    settings = get_settings()
    questionnaire = Questionnaire.load(settings.data_path("questionnaires/hal32q.json"))
    judges = {
        judge: witness_ratings(
            read_table(settings.data_path(f"turing/ratings32_{judge}.csv")), questionnaire
        )
        for judge in JUDGES
    }
    trait_ids = questionnaire.trait_ids
    config = StabilityConfig()
    start = time.process_time()
    stable = stable_set(stability_table(judges, trait_ids, config), config.threshold)
    stability_seconds = time.process_time() - start
    print(f"stable set ({config.n_bootstraps} bootstraps x {len(judges)} judges, "
          f"{stability_seconds:.1f} s CPU): {' '.join(stable)}")  # fmt: skip
    records = []
    for seed in fold_seeds:
        folds_by_judge = {}
        for judge, frame in judges.items():
            y = frame["is_human"].to_numpy(int)
            games = frame["game_id"].to_numpy()
            folds = folds_by_judge[judge] = grouped_folds(games, 10, seed)
            for name, glass_box, selection, make, fixed in _variants(stable):
                X = frame[fixed or trait_ids]
                scores, seconds = _evaluate(make, X, y, games, folds)
                records.append(
                    {"model": name, "glass_box": glass_box, "selection": selection,
                     "judge": judge, "fold_seed": seed, "n_traits": X.shape[1],
                     "acc": float(((scores > 0) == y).mean()),
                     "paired": paired_accuracy(scores, y, games), "cpu_s": seconds}
                )  # fmt: skip
            print(f"  fold seed {seed}, {judge}: done", flush=True)
        if nested:
            start = time.process_time()
            nested_scores = _nested_stable(judges, trait_ids, folds_by_judge[JUDGES[0]], config)
            seconds = time.process_time() - start
            for judge, scores in nested_scores.items():
                frame = judges[judge]
                y = frame["is_human"].to_numpy(int)
                records.append(
                    {"model": "l1 on the stable set chosen in folds", "glass_box": True,
                     "selection": "in folds", "judge": judge, "fold_seed": seed,
                     "n_traits": np.nan, "acc": float(((scores > 0) == y).mean()),
                     "paired": paired_accuracy(scores, y, frame["game_id"].to_numpy()),
                     "cpu_s": seconds / len(judges)}
                )  # fmt: skip
    return pd.DataFrame(records), stable


def summarise(records: pd.DataFrame) -> pd.DataFrame:
    order = list(dict.fromkeys(records["model"]))
    table = records.pivot_table(
        index=["model", "glass_box", "selection"],
        columns="judge",
        values=["acc", "paired", "cpu_s"],
        aggfunc="mean",
    )
    table.columns = [f"{value}.{judge}" for value, judge in table.columns]
    table = table.reset_index()
    table["_order"] = table["model"].map(order.index)
    baseline = table.loc[table["_order"] == 0, [c for c in table if c.startswith("cpu_s")]]
    for column in baseline:
        table[f"{column}.vs_l1"] = table[column] / float(baseline[column].iloc[0])
    return table.sort_values("_order").drop(columns="_order").reset_index(drop=True)


def log_to_mlflow(records: pd.DataFrame, summary: pd.DataFrame, stable: list[str]) -> str:
    import mlflow

    from tasks import tracking

    settings = get_settings()
    tracking.configure_tracking(settings)
    experiment = tracking.ensure_experiment(settings.experiment_reward, settings)
    with mlflow.start_run(run_name="bench_fit_reward", experiment_id=experiment) as run:
        mlflow.log_params({"fold_seeds": sorted(set(records.fold_seed)),
                           "stable_trait_ids": " ".join(stable)})  # fmt: skip
        with tempfile.TemporaryDirectory() as folder:
            summary.to_csv(Path(folder, "reward_curve.csv"), index=False)
            records.to_csv(Path(folder, "reward_curve_per_seed.csv"), index=False)
            mlflow.log_artifacts(folder)
    return run.info.run_id


def time_flow() -> None:
    with tempfile.TemporaryDirectory() as home:
        os.environ["HAL_HOME"] = home
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        from flows.fit_reward import FitRewardParams, fit_reward
        from hal_core.reward import RewardConfig

        settings = get_settings()
        questionnaire = Questionnaire.load(settings.data_path("questionnaires/hal32q.json"))
        witnesses = witness_ratings(
            read_table(settings.data_path("turing/ratings32_gpt-5.csv")), questionnaire
        )
        config = RewardConfig()
        start = time.perf_counter()
        row_kfold_accuracies(
            witnesses[questionnaire.trait_ids], witnesses["is_human"].to_numpy(), config.C,
            config.cv_folds, config.paper_cv_seeds,
        )  # fmt: skip
        cv_seconds = time.perf_counter() - start
        start, cpu = time.perf_counter(), time.process_time()
        fit_reward(FitRewardParams(register_as=None))
        flow_seconds, flow_cpu = time.perf_counter() - start, time.process_time() - cpu
    n_fits = config.cv_folds * len(config.paper_cv_seeds)
    print(f"paper CV ({n_fits} fits): {cv_seconds:.2f} s ({1000 * cv_seconds / n_fits:.1f} ms/fit)")
    print(f"fit_reward flow (validate 2 judges, fit, CV, stability, comparison, log): "
          f"{flow_seconds:.2f} s wall, {flow_cpu:.2f} s CPU in this process; "
          f"paper CV share {cv_seconds / flow_seconds:.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fold-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--nested-stability", action="store_true")
    parser.add_argument("--flow", action="store_true", help="also time the fit_reward flow")
    parser.add_argument("--output", type=Path, default=Path(".hal/bench/reward_curve.csv"))
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--no-curve", action="store_true", help="skip the accuracy curve")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if not args.no_curve:
        report_curve(args)
    if args.flow:
        time_flow()


def report_curve(args: argparse.Namespace) -> None:
    records, stable = curve(args.fold_seeds, args.nested_stability)
    summary = summarise(records)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    summary.to_csv(args.output, index=False)
    records.to_csv(args.output.with_name(f"{args.output.stem}_per_seed.csv"), index=False)
    print(f"written: {args.output}")
    if not args.no_mlflow:
        print(f"MLflow run: {log_to_mlflow(records, summary, stable)}")


if __name__ == "__main__":
    main()
