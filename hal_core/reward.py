"""The human-likeness (HL) reward: an L1 logistic regression over trait ratings, keyed by trait id.

``TraitLogisticRegression`` is a scikit-learn estimator (``fit``/``decision_function``, fitted
attributes end in ``_``) that fits all traits, keeps those with ``|w| > selection_threshold``
and refits on them. ``HLReward`` is its exported, versioned artifact. ``fit_reward`` runs the
three evaluation protocols and returns everything a report needs.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, KFold

PAPER_CV_SEEDS = (57, 14, 20, 10, 82, 89, 8, 23, 45, 19, 45, 95, 44, 64, 80, 30, 10, 8, 72, 95)
"""The 20 KFold seeds of the paper's notebook (duplicates included, as published)."""

PAPER_HAL16_TRAIT_IDS = (
    "t01", "t02", "t03", "t04", "t05", "t06", "t07", "t12",
    "t15", "t17", "t20", "t21", "t24", "t26", "t28", "t32",
)  # fmt: skip
"""HAL32Q ids of the published weight vector ``w[k]`` (see the data README)."""


class RewardConfig(BaseModel):
    """How the reward is fitted and evaluated."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    C: float = Field(default=1.0, gt=0, description="Inverse L1 regularisation strength.")
    selection_threshold: float = Field(
        default=0.2, ge=0, description="Keep traits whose full-model |weight| exceeds this."
    )
    cv_folds: int = Field(default=10, ge=2, description="Folds of every cross-validation.")
    paper_cv_seeds: tuple[int, ...] = Field(
        default=PAPER_CV_SEEDS, description="Seeds of the paper's repeated row-wise KFold."
    )
    refit_cv_seed: int = Field(default=42, description="KFold seed for the refit's accuracy.")
    grouped_cv_seed: int = Field(default=42, description="Shuffle seed of game-grouped CV.")


def l1_logistic(C: float) -> LogisticRegression:
    """The paper's classifier: L1 logistic regression by liblinear (seeded: it shuffles)."""
    return LogisticRegression(l1_ratio=1.0, C=C, solver="liblinear", random_state=0)


class TraitLogisticRegression(ClassifierMixin, BaseEstimator):
    """L1 logistic regression over trait-id columns, optionally with selection and refit."""

    def __init__(self, C: float = 1.0, selection_threshold: float | None = 0.2) -> None:
        self.C = C
        self.selection_threshold = selection_threshold

    def fit(self, X: pd.DataFrame, y: Sequence[int]) -> TraitLogisticRegression:
        # liblinear's coordinate descent depends on column order; sorting by id makes a
        # reordered questionnaire give the same fit.
        X = _trait_frame(X)
        X = X[sorted(X.columns)]
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        full = _fit_l1(X.to_numpy(float), y, self.C)
        self.full_coef_ = pd.Series(full.coef_[0], index=X.columns)
        self.full_intercept_ = float(full.intercept_[0])
        if self.selection_threshold is None:
            self.selected_trait_ids_ = list(X.columns)
            model = full
        else:
            keep = self.full_coef_.abs() > self.selection_threshold
            self.selected_trait_ids_ = list(X.columns[keep.to_numpy()])
            if not self.selected_trait_ids_:
                raise ValueError(
                    f"no trait has |weight| > {self.selection_threshold}; lower the threshold"
                )
            model = _fit_l1(X[self.selected_trait_ids_].to_numpy(float), y, self.C)
        self.coef_ = pd.Series(model.coef_[0], index=self.selected_trait_ids_)
        self.intercept_ = float(model.intercept_[0])
        return self

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        return self.to_reward().score(X)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return (self.decision_function(X) > 0).astype(int)

    def to_reward(self, **metadata: object) -> HLReward:
        return HLReward(
            weights={k: float(v) for k, v in self.coef_.items()},
            bias=self.intercept_,
            metadata=dict(metadata),
        )


def _fit_l1(X: np.ndarray, y: np.ndarray, C: float) -> LogisticRegression:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        return l1_logistic(C).fit(X, y)


def _trait_frame(X: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(X, pd.DataFrame):
        raise TypeError("trait ratings must be a DataFrame with one column per trait id")
    return X


class MissingTraitError(KeyError):
    """Ratings lack a trait the reward needs."""


@dataclass(frozen=True)
class HLReward:
    """HL score = sum over traits of weight[id] * rating[id] + bias."""

    weights: Mapping[str, float]
    bias: float
    metadata: Mapping[str, object] = field(default_factory=dict)

    @property
    def trait_ids(self) -> list[str]:
        return list(self.weights)

    def score(self, ratings: pd.DataFrame | Mapping[str, Sequence[float]]) -> np.ndarray:
        """HL scores of rows of ratings, matched to weights by trait id (order is irrelevant)."""
        frame = pd.DataFrame(ratings)
        missing = [trait_id for trait_id in self.weights if trait_id not in frame.columns]
        if missing:
            raise MissingTraitError(f"ratings lack traits {missing} needed by the reward")
        values = frame[self.trait_ids].to_numpy(float)
        return values @ np.array([self.weights[t] for t in self.trait_ids]) + self.bias

    @property
    def version(self) -> str:
        canonical = json.dumps(
            {"weights": sorted(self.weights.items()), "bias": self.bias}, sort_keys=True
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {
            "format": "hal-reward/1",
            "version": self.version,
            "weights": dict(self.weights),
            "bias": self.bias,
            "metadata": dict(self.metadata),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        return path

    @classmethod
    def from_dict(cls, payload: Mapping, source: str = "<reward>") -> HLReward:
        try:
            weights = {str(k): float(v) for k, v in payload["weights"].items()}
            bias = float(payload["bias"])
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"{source}: not a reward (needs weights by id and bias)") from error
        return cls(weights=weights, bias=bias, metadata=dict(payload.get("metadata", {})))

    @classmethod
    def load(cls, path: str | Path) -> HLReward:
        path = Path(path)
        return cls.from_dict(json.loads(path.read_text()), source=str(path))

    @classmethod
    def from_paper_weights(
        cls, path: str | Path, trait_ids: Sequence[str] = PAPER_HAL16_TRAIT_IDS
    ) -> HLReward:
        """The published ``{"w": [...], "b": ...}`` file; ``w[k]`` belongs to ``trait_ids[k]``."""
        payload = json.loads(Path(path).read_text())
        weights = payload["w"]
        if len(weights) != len(trait_ids):
            raise ValueError(f"{path}: {len(weights)} weights for {len(trait_ids)} trait ids")
        return cls(
            weights=dict(zip(trait_ids, map(float, weights), strict=True)),
            bias=float(payload["b"]),
            metadata={"source": str(path)},
        )


def paired_accuracy(scores: np.ndarray, is_human: np.ndarray, game_ids: np.ndarray) -> float:
    """Share of games whose human witness scores higher than the AI witness (ties count half)."""
    frame = pd.DataFrame({"score": scores, "is_human": is_human, "game": game_ids})
    human = frame[frame.is_human == 1].groupby("game")["score"].mean()
    machine = frame[frame.is_human == 0].groupby("game")["score"].mean()
    common = human.index.intersection(machine.index)
    if len(common) == 0:
        raise ValueError("no game has both a human and an AI witness")
    diff = human[common] - machine[common]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def row_kfold_accuracies(
    X: pd.DataFrame, y: np.ndarray, C: float, folds: int, seeds: Sequence[int]
) -> np.ndarray:
    """The paper's protocol: mean accuracy of KFold(shuffle) over rows, once per seed."""
    values = X.to_numpy(float)
    accuracies = []
    for seed in seeds:
        fold_scores = []
        for train, test in KFold(folds, shuffle=True, random_state=seed).split(values):
            model = _fit_l1(values[train], y[train], C)
            fold_scores.append(model.score(values[test], y[test]))
        accuracies.append(float(np.mean(fold_scores)))
    return np.asarray(accuracies)


def grouped_out_of_fold_scores(
    X: pd.DataFrame,
    y: np.ndarray,
    groups: np.ndarray,
    estimator: TraitLogisticRegression,
    folds: int,
    seed: int,
) -> np.ndarray:
    """HL scores of every row from a model fitted (selection included) without its game."""
    scores = np.empty(len(X))
    splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(X, y, groups):
        model = clone(estimator).fit(X.iloc[train], y[train])
        scores[test] = model.decision_function(X.iloc[test])
    return scores


@dataclass(frozen=True)
class RewardFit:
    """A fitted reward with its evaluation under the three protocols."""

    reward: HLReward
    full_weights: dict[str, float]
    full_bias: float
    selected_trait_ids: list[str]
    paper_cv_accuracies: np.ndarray
    refit_cv_accuracy: float
    grouped_cv_accuracy: float
    paired_accuracy: float
    grouped_scores: np.ndarray
    train_scores: np.ndarray

    def metrics(self) -> dict[str, float]:
        return {
            "cv.accuracy.mean": float(self.paper_cv_accuracies.mean()),
            "cv.accuracy.std": float(self.paper_cv_accuracies.std()),
            "cv_refit.accuracy": self.refit_cv_accuracy,
            "cv_grouped.accuracy": self.grouped_cv_accuracy,
            "paired.accuracy": self.paired_accuracy,
            "n_selected": float(len(self.selected_trait_ids)),
        }


def fit_reward(
    witnesses: pd.DataFrame, trait_ids: Sequence[str], config: RewardConfig
) -> RewardFit:
    """Fit and evaluate the HL reward on a witness table (``is_human``, ``game_id``, trait ids).

    (a) the paper's protocol: row-wise KFold accuracy of the all-trait model, per seed, and of
    the refit on the selected traits (one seed); (b) game-grouped KFold of the whole procedure,
    selection included, so no game's witnesses straddle train and test; (c) paired accuracy
    of the grouped out-of-fold scores.
    """
    X = witnesses[list(trait_ids)]
    y = witnesses["is_human"].to_numpy(int)
    groups = witnesses["game_id"].to_numpy()
    estimator = TraitLogisticRegression(C=config.C, selection_threshold=config.selection_threshold)
    fitted = clone(estimator).fit(X, y)
    paper = row_kfold_accuracies(X, y, config.C, config.cv_folds, config.paper_cv_seeds)
    refit = row_kfold_accuracies(
        X[fitted.selected_trait_ids_], y, config.C, config.cv_folds, [config.refit_cv_seed]
    )[0]
    grouped = grouped_out_of_fold_scores(
        X, y, groups, estimator, config.cv_folds, config.grouped_cv_seed
    )
    return RewardFit(
        reward=fitted.to_reward(),
        full_weights={k: float(v) for k, v in fitted.full_coef_.items()},
        full_bias=fitted.full_intercept_,
        selected_trait_ids=list(fitted.selected_trait_ids_),
        paper_cv_accuracies=paper,
        refit_cv_accuracy=float(refit),
        grouped_cv_accuracy=float(((grouped > 0).astype(int) == y).mean()),
        paired_accuracy=paired_accuracy(grouped, y, groups),
        grouped_scores=grouped,
        train_scores=fitted.decision_function(X),
    )
