"""Reward models compared on the same game-grouped folds, one table for every judge.

Each candidate is a trait set plus an estimator: the paper's L1 logistic with its selection
(done inside every training fold), an L1 fit on a fixed trait set (the paper's 16, the stable
set), the glass-box shape reward, and a black box (gradient-boosted trees). Folds are
game-grouped: a game's two witnesses are on the same side of every split. Scores are
out-of-fold; accuracy is the share of witnesses on the right side of 0, paired accuracy the
share of games whose human witness scores higher.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from hal_core.folds import grouped_folds
from hal_core.reward import paired_accuracy

COMPARISON_COLUMNS = (
    "judge",
    "model",
    "trait_set",
    "n_traits",
    "selection",
    "cv_grouped_accuracy",
    "paired_accuracy",
    "folds",
    "fold_seed",
)

SELECTION_IN_FOLDS = "inside folds"
SELECTION_FIXED = "fixed set (chosen on all data)"
SELECTION_NONE = "none (every trait)"


class GradientBoostedTraits(ClassifierMixin, BaseEstimator):
    """The black-box reference: histogram gradient boosting over trait-id columns.

    It runs on one OpenMP thread: on a thousand rows threads gain nothing, and on a shared,
    oversubscribed machine their spin-waits made one fit 50x slower (bench/fit_reward.py).
    """

    def __init__(self, random_state: int = 0) -> None:
        self.random_state = random_state

    def fit(self, X: pd.DataFrame, y: Sequence[int]) -> GradientBoostedTraits:
        self.feature_names_in_ = np.asarray(sorted(X.columns), dtype=object)
        self.model_ = HistGradientBoostingClassifier(random_state=self.random_state)
        with threadpool_limits(limits=1, user_api="openmp"):
            self.model_.fit(X[list(self.feature_names_in_)].to_numpy(float), np.asarray(y))
        self.classes_ = self.model_.classes_
        return self

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        with threadpool_limits(limits=1, user_api="openmp"):
            return self.model_.decision_function(X[list(self.feature_names_in_)].to_numpy(float))


@dataclass(frozen=True)
class Candidate:
    """One row of the comparison: a model on a trait set."""

    model: str
    trait_set: str
    trait_ids: tuple[str, ...]
    make: Callable[[], BaseEstimator]
    selection: str


def _fit(estimator, X: pd.DataFrame, y: np.ndarray, groups: np.ndarray):
    if "groups" in inspect.signature(estimator.fit).parameters:
        return estimator.fit(X, y, groups=groups)
    return estimator.fit(X, y)


def out_of_fold_scores(
    make: Callable[[], BaseEstimator],
    X: pd.DataFrame,
    y: np.ndarray,
    groups: np.ndarray,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
) -> np.ndarray:
    """Decision scores of every row from a model fitted without its game."""
    scores = np.full(len(X), np.nan)
    for train, test in folds:
        model = _fit(make(), X.iloc[train], y[train], groups[train])
        scores[test] = model.decision_function(X.iloc[test])
    return scores


def n_traits_used(model: BaseEstimator, trait_ids: Sequence[str]) -> int:
    """Traits a model fitted on all rows uses (after its own selection, if any)."""
    return len(getattr(model, "selected_trait_ids_", trait_ids))


def compare_candidates(
    judges: Mapping[str, pd.DataFrame],
    candidates: Mapping[str, Sequence[Candidate]],
    n_splits: int,
    seed: int,
) -> pd.DataFrame:
    """One row per (judge, candidate); every candidate of a judge on the same folds.

    ``candidates[judge]`` lists what to evaluate on that judge's witness table (``game_id``,
    ``is_human`` and the candidates' trait columns).
    """
    rows = []
    for judge, witnesses in judges.items():
        y = witnesses["is_human"].to_numpy(int)
        groups = witnesses["game_id"].to_numpy()
        folds = grouped_folds(groups, n_splits, seed)
        for candidate in candidates.get(judge, ()):
            X = witnesses[list(candidate.trait_ids)]
            scores = out_of_fold_scores(candidate.make, X, y, groups, folds)
            n_traits = len(candidate.trait_ids)
            if candidate.selection == SELECTION_IN_FOLDS:  # how many a fit on all rows keeps
                n_traits = n_traits_used(_fit(candidate.make(), X, y, groups), candidate.trait_ids)
            rows.append(
                {
                    "judge": judge,
                    "model": candidate.model,
                    "trait_set": candidate.trait_set,
                    "n_traits": n_traits,
                    "selection": candidate.selection,
                    "cv_grouped_accuracy": float(((scores > 0).astype(int) == y).mean()),
                    "paired_accuracy": paired_accuracy(scores, y, groups),
                    "folds": n_splits,
                    "fold_seed": seed,
                }
            )
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
