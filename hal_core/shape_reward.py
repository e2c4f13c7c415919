"""The glass-box HL reward: one shape function per trait, fitted as a smooth logistic GAM.

Each trait's contribution is a value per Likert level. It is fitted in *thermometer* coding:
the columns of trait ``t`` are ``1[rating >= 2] .. 1[rating >= max]``, so a coefficient is the
step between two adjacent levels and a ridge penalty on the steps pulls a shape towards flat,
never towards zig-zag. Each step column is standardised before the penalty, so a step is
penalised by the variance of its contribution over the training witnesses (a rare step is
cheap to take only when the data insist on it). The regularisation strength ``C`` is picked by
game-grouped inner cross-validation when not given.

The fitted model is exported as a shape :class:`hal_core.reward.HLReward`, so
``HL = bias + sum over traits of contribution_t(rating_t)`` is scored by the same code as the
linear reward, keyed by trait id.

Why not EBM (``interpret``) or ``pygam``: the issue measured an EBM at 0.808 game-grouped
accuracy on GPT-5's ratings, and boosted one-trait trees (the EBM idea on scikit-learn) score
0.797 in bench/fit_reward.py, where this model scores 0.817 (paired 0.897). The fit here is a
few dozen lines on scikit-learn, adds no dependency, and a Likert rating has five values, so an
exact value per level needs no spline basis or binning.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from threadpoolctl import threadpool_limits

from hal_core.reward import HLReward, check_rating_columns

DEFAULT_C = 0.01
"""Fixed default, the best of the grid on GPT-5-mini's ratings (game-grouped 10-fold CV), so the
GPT-5 figures never chose it. Inner CV (``C=None``) picks it less reliably: its log-likelihood
prefers 0.03 and loses about a point of accuracy on both judges (bench/fit_reward.py)."""

DEFAULT_CS = (0.003, 0.01, 0.03, 0.1)
"""Grid of inverse penalty strengths searched by inner CV (on the standardised step columns)."""


class ShapeConfig(BaseModel):
    """How the glass-box (shape) reward is fitted."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    C: float | None = Field(
        default=DEFAULT_C,
        gt=0,
        description="Inverse penalty on the standardised level steps; None = chosen by "
        "game-grouped inner CV from Cs.",
    )
    Cs: tuple[float, ...] = Field(
        default=DEFAULT_CS, min_length=1, description="Candidate values of C for the inner CV."
    )
    inner_folds: int = Field(default=5, ge=2, description="Folds of the inner, game-grouped CV.")
    random_state: int = Field(default=0, description="Shuffle seed of the inner CV folds.")


def thermometer(values: np.ndarray, scale: tuple[int, int]) -> np.ndarray:
    """``n x T`` ratings -> ``n x T*(levels-1)`` step indicators ``1[rating >= level]``.

    A fractional rating switches its upper step on partially (``rating - floor``), so the
    fitted shape is linear between levels, as :meth:`HLReward.contributions` scores it.
    """
    low, high = scale
    steps = np.arange(low + 1, high + 1, dtype=float)
    parts = np.clip(values[:, :, None] - (steps - 1)[None, None, :], 0.0, 1.0)
    return parts.reshape(values.shape[0], -1)


class ShapeRewardRegression(ClassifierMixin, BaseEstimator):
    """Logistic GAM over trait-id columns: a smooth per-level shape function per trait."""

    def __init__(
        self,
        C: float | None = DEFAULT_C,
        Cs: Sequence[float] = DEFAULT_CS,
        inner_folds: int = 5,
        random_state: int = 0,
        scale: tuple[int, int] = (1, 5),
    ) -> None:
        self.C = C
        self.Cs = Cs
        self.inner_folds = inner_folds
        self.random_state = random_state
        self.scale = scale

    @classmethod
    def from_config(cls, config: ShapeConfig, scale: tuple[int, int]) -> ShapeRewardRegression:
        return cls(config.C, config.Cs, config.inner_folds, config.random_state, scale)

    def fit(
        self, X: pd.DataFrame, y: Sequence[int], groups: Sequence | None = None
    ) -> ShapeRewardRegression:
        """Fit on ratings by trait id; ``groups`` (game ids) are needed when ``C`` is None."""
        if not isinstance(X, pd.DataFrame):
            raise TypeError("trait ratings must be a DataFrame with one column per trait id")
        trait_ids = sorted(X.columns)
        values = check_rating_columns(X, trait_ids, self.scale).to_numpy()
        y = np.asarray(y).astype(int)
        self.classes_ = np.unique(y)
        self.feature_names_in_ = np.asarray(trait_ids, dtype=object)
        if self.C is None:
            if groups is None:
                raise ValueError("ShapeRewardRegression(C=None) chooses C by game-grouped CV: "
                                 "pass groups (the game id of each row) to fit")  # fmt: skip
            self.cv_scores_ = self._inner_cv(values, y, np.asarray(groups))
            self.C_ = float(max(self.cv_scores_, key=lambda c: (self.cv_scores_[c], -c)))
        else:
            self.C_ = float(self.C)
        steps, self.intercept_ = _fit_steps(thermometer(values, self.scale), y, self.C_)
        n_steps = self.scale[1] - self.scale[0]
        shapes = np.concatenate(
            [np.zeros((len(trait_ids), 1)), np.cumsum(steps.reshape(-1, n_steps), axis=1)], axis=1
        )
        # Centre each shape on its mean over the training witnesses: a contribution then reads
        # as "above or below the average witness", and the bias is the average witness's score.
        levels = np.arange(self.scale[0], self.scale[1] + 1, dtype=float)
        offsets = np.array(
            [np.interp(values[:, j], levels, shapes[j]).mean() for j in range(len(trait_ids))]
        )
        self.shapes_ = pd.DataFrame(
            shapes - offsets[:, None], index=trait_ids, columns=levels.astype(int)
        )
        self.intercept_ = float(self.intercept_ + offsets.sum())
        return self

    def _inner_cv(self, values: np.ndarray, y: np.ndarray, groups: np.ndarray) -> dict:
        """Mean held-out log-likelihood per C over game-grouped inner folds."""
        splitter = GroupKFold(self.inner_folds, shuffle=True, random_state=self.random_state)
        coded = thermometer(values, self.scale)
        totals = dict.fromkeys(map(float, self.Cs), 0.0)
        for train, test in splitter.split(coded, y, groups):
            for C in totals:
                steps, bias = _fit_steps(coded[train], y[train], C)
                margin = (coded[test] @ steps + bias) * (2 * y[test] - 1)
                totals[C] -= float(np.logaddexp(0.0, -margin).sum())
        return {C: total / len(y) for C, total in totals.items()}

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        return self.to_reward().score(X)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return (self.decision_function(X) > 0).astype(int)

    def to_reward(self, **metadata: object) -> HLReward:
        return HLReward(
            shapes={t: tuple(map(float, row)) for t, row in self.shapes_.iterrows()},
            bias=self.intercept_,
            metadata={"C": self.C_, **metadata},
            scale=tuple(self.scale),
        )


def _fit_steps(coded: np.ndarray, y: np.ndarray, C: float) -> tuple[np.ndarray, float]:
    """Ridge logistic regression on standardised step columns; steps in rating units."""
    spread = coded.std(axis=0)
    constant = spread < 1e-12  # a level no training witness reached: its step stays flat
    spread[constant] = 1.0
    model = LogisticRegression(C=C, l1_ratio=0.0, solver="newton-cholesky", tol=1e-6)
    # One BLAS thread: a 129-column Newton step gains nothing from more, and on a shared
    # machine extra threads only wait on each other.
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore", category=UserWarning)
        model.fit(coded / spread, y)
    steps = model.coef_[0] / spread
    steps[constant] = 0.0
    return steps, float(model.intercept_[0])
