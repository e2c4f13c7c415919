"""The human-likeness (HL) reward: a bias plus one contribution per trait, keyed by trait id.

``HLReward`` is the exported, versioned artifact, of two kinds: *linear* (a weight per trait,
the paper's) or *shape* (a contribution per rating level, see :mod:`hal_core.shape_reward`).
Both score through :meth:`HLReward.contributions`, which refuses ratings that are missing,
not numbers or off the scale, naming the row and column. ``TraitLogisticRegression`` is the
paper's estimator (``fit``/``decision_function``, fitted attributes end in ``_``): it fits all
traits, keeps those with ``|w| > selection_threshold`` and refits on them. ``fit_reward`` runs
the three evaluation protocols and returns everything a report needs.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold

from hal_core.folds import grouped_folds
from hal_core.reward_curves import HeldOutCurves, held_out_curves
from hal_core.tables import ROW_COLUMN

PAPER_CV_SEEDS = (57, 14, 20, 10, 82, 89, 8, 23, 45, 19, 45, 95, 44, 64, 80, 30, 10, 8, 72, 95)
"""The 20 KFold seeds of the paper's notebook (duplicates included, as published)."""

PAPER_HAL16_TRAIT_IDS = (
    "t01",
    "t02",
    "t03",
    "t04",
    "t05",
    "t06",
    "t07",
    "t12",
    "t15",
    "t17",
    "t20",
    "t21",
    "t24",
    "t26",
    "t28",
    "t32",
)
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

    def to_reward(self, scale: tuple[int, int] = (1, 5), **metadata: object) -> HLReward:
        return HLReward(
            weights={k: float(v) for k, v in self.coef_.items()},
            bias=self.intercept_,
            metadata=dict(metadata),
            scale=scale,
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


class RewardFileError(ValueError):
    """A reward file or payload that breaks a rule; the message names the source and key."""


class RatingsError(ValueError):
    """Ratings that a reward cannot score; the message names the row, column and rule."""


REWARD_FORMAT = "hal-reward/2"
"""Written by :meth:`HLReward.to_dict`; ``hal-reward/1`` (linear, no ``kind``) still loads."""

RewardKind = Literal["linear", "shape"]


@dataclass(frozen=True)
class HLReward:
    """HL = bias + sum over traits of contribution[id](rating[id]), traits keyed by id.

    A *linear* reward has ``weights`` (contribution = weight * rating). A *shape* reward has
    ``shapes``: the contribution at each level of the rating scale, linear in between (so a
    fractional rating such as an expected value scores between its neighbours). Either way the
    score is a bias plus one readable contribution per trait, computed by :meth:`contributions`.
    """

    weights: Mapping[str, float] = field(default_factory=dict)
    bias: float = 0.0
    metadata: Mapping[str, object] = field(default_factory=dict)
    shapes: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    scale: tuple[int, int] = (1, 5)

    def __post_init__(self) -> None:
        _check_reward(self.weights, self.bias, self.shapes, self.scale, "<reward>")

    @property
    def kind(self) -> RewardKind:
        return "shape" if self.shapes else "linear"

    @property
    def trait_ids(self) -> list[str]:
        return [*self.weights, *self.shapes]

    @property
    def levels(self) -> np.ndarray:
        """The rating scale's levels, e.g. ``[1, 2, 3, 4, 5]``."""
        return np.arange(self.scale[0], self.scale[1] + 1, dtype=float)

    def contributions(self, ratings: pd.DataFrame | Mapping[str, Sequence[float]]) -> pd.DataFrame:
        """Each trait's contribution to the HL score of each row (one column per trait id)."""
        values = self.checked_ratings(ratings)
        parts = {t: values[t].to_numpy() * w for t, w in self.weights.items()}
        levels = self.levels
        for trait_id, shape in self.shapes.items():
            parts[trait_id] = np.interp(values[trait_id].to_numpy(), levels, np.asarray(shape))
        return pd.DataFrame(parts, index=values.index, columns=self.trait_ids)

    def score(self, ratings: pd.DataFrame | Mapping[str, Sequence[float]]) -> np.ndarray:
        """HL scores of rows of ratings, matched to the reward's traits by id (order is
        irrelevant; other columns are ignored)."""
        return self.contributions(ratings).to_numpy().sum(axis=1) + self.bias

    def checked_ratings(
        self, ratings: pd.DataFrame | Mapping[str, Sequence[float]]
    ) -> pd.DataFrame:
        """The reward's trait columns as floats; missing traits, non-numeric values, NaN and
        values off the rating scale are errors naming the row and column."""
        frame = ratings if isinstance(ratings, pd.DataFrame) else pd.DataFrame(ratings)
        missing = [trait_id for trait_id in self.trait_ids if trait_id not in frame.columns]
        if missing:
            raise MissingTraitError(f"ratings lack traits {missing} needed by the reward")
        return check_rating_columns(frame, self.trait_ids, self.scale)

    def contribution_ranges(self) -> dict[str, float]:
        """How far each trait can move the score over the rating scale (max - min)."""
        low, high = self.scale
        ranges = {t: abs(w) * (high - low) for t, w in self.weights.items()}
        ranges.update({t: float(max(s) - min(s)) for t, s in self.shapes.items()})
        return ranges

    @property
    def version(self) -> str:
        if self.kind == "linear":  # unchanged since hal-reward/1, so old versions still match
            payload: dict = {"weights": sorted(self.weights.items()), "bias": self.bias}
        else:
            payload = {
                "kind": "shape",
                "scale": list(self.scale),
                "shapes": sorted((t, list(s)) for t, s in self.shapes.items()),
                "bias": self.bias,
            }
        canonical = json.dumps(payload, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        payload: dict = {
            "format": REWARD_FORMAT,
            "kind": self.kind,
            "version": self.version,
            "scale": {"min": self.scale[0], "max": self.scale[1]},
        }
        if self.kind == "linear":
            payload["weights"] = dict(self.weights)
        else:
            levels = [str(level) for level in range(self.scale[0], self.scale[1] + 1)]
            payload["shapes"] = {
                trait_id: dict(zip(levels, map(float, shape), strict=True))
                for trait_id, shape in self.shapes.items()
            }
        payload["bias"] = self.bias
        payload["metadata"] = dict(self.metadata)
        return payload

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        return path

    @classmethod
    def from_dict(cls, payload: Mapping, source: str = "<reward>") -> HLReward:
        """A reward of the kind the payload names (``linear`` when it names none: format 1)."""
        if not isinstance(payload, Mapping):
            raise RewardFileError(f"{source}: not a reward (expected a JSON object)")
        kind = payload.get("kind", "linear")
        if kind not in ("linear", "shape"):
            raise RewardFileError(f"{source}: key 'kind' is {kind!r}; expected linear or shape")
        scale = _read_scale(payload, source)
        metadata = payload.get("metadata", {})
        if not isinstance(metadata, Mapping):
            raise RewardFileError(f"{source}: key 'metadata' must be an object")
        bias = _read_number(payload, "bias", source)
        if kind == "linear":
            weights = _read_mapping(payload, "weights", source)
            read = {str(k): _read_number(weights, k, source, f"weights.{k}") for k in weights}
            return cls._checked(
                source, weights=read, bias=bias, metadata=dict(metadata), scale=scale
            )
        shapes = _read_mapping(payload, "shapes", source)
        levels = [str(level) for level in range(scale[0], scale[1] + 1)]
        read_shapes = {}
        for trait_id, shape in shapes.items():
            if not isinstance(shape, Mapping) or sorted(shape) != sorted(levels):
                raise RewardFileError(
                    f"{source}: key 'shapes.{trait_id}' must map every level {levels} to a "
                    "contribution"
                )
            read_shapes[str(trait_id)] = tuple(
                _read_number(shape, level, source, f"shapes.{trait_id}.{level}") for level in levels
            )
        return cls._checked(
            source, shapes=read_shapes, bias=bias, metadata=dict(metadata), scale=scale
        )

    @classmethod
    def _checked(cls, source: str, **fields: object) -> HLReward:
        try:
            return cls(**fields)
        except RewardFileError as error:
            raise RewardFileError(str(error).replace("<reward>", source, 1)) from None

    @classmethod
    def load(cls, path: str | Path) -> HLReward:
        path = Path(path)
        try:
            payload = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise RewardFileError(f"{path}: not valid JSON ({error})") from error
        return cls.from_dict(payload, source=str(path))

    @classmethod
    def from_paper_weights(
        cls, path: str | Path, trait_ids: Sequence[str] = PAPER_HAL16_TRAIT_IDS
    ) -> HLReward:
        """The published ``{"w": [...], "b": ...}`` file; ``w[k]`` belongs to ``trait_ids[k]``."""
        payload = json.loads(Path(path).read_text())
        weights = payload["w"]
        if len(weights) != len(trait_ids):
            raise ValueError(f"{path}: {len(weights)} weights for {len(trait_ids)} trait ids")
        return cls._checked(
            str(path),
            weights={
                t: _read_number(payload["w"], k, str(path), f"w[{k}]")
                for k, t in enumerate(trait_ids)
            },
            bias=_read_number(payload, "b", str(path)),
            metadata={"source": str(path)},
        )


def _read_number(
    container: Mapping | Sequence, key: object, source: str, name: str | None = None
) -> float:
    name = name or str(key)
    try:
        value = container[key]  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        raise RewardFileError(f"{source}: key '{name}' is missing") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RewardFileError(f"{source}: key '{name}' is {value!r}; expected a number")
    if not np.isfinite(value):
        raise RewardFileError(f"{source}: key '{name}' is {value!r}; expected a finite number")
    return float(value)


def _read_mapping(payload: Mapping, key: str, source: str) -> Mapping:
    value = payload.get(key)
    if not isinstance(value, Mapping) or not value:
        raise RewardFileError(f"{source}: key '{key}' must be a non-empty object keyed by trait id")
    return value


def _read_scale(payload: Mapping, source: str) -> tuple[int, int]:
    scale = payload.get("scale", {"min": 1, "max": 5})
    if not isinstance(scale, Mapping):
        raise RewardFileError(f"{source}: key 'scale' must be an object with min and max")
    low, high = (_read_number(scale, k, source, f"scale.{k}") for k in ("min", "max"))
    if low != int(low) or high != int(high) or low >= high:
        raise RewardFileError(f"{source}: key 'scale' must hold integers min < max, got {scale}")
    return int(low), int(high)


def _check_reward(
    weights: Mapping[str, float],
    bias: float,
    shapes: Mapping[str, Sequence[float]],
    scale: tuple[int, int],
    source: str,
) -> None:
    """Finite numbers only, one term per trait, one shape value per scale level."""
    if not weights and not shapes:
        raise RewardFileError(f"{source}: the reward has no trait (weights or shapes)")
    if weights and shapes:
        raise RewardFileError(f"{source}: a reward is linear (weights) or shape, not both")
    if not np.isfinite(bias):
        raise RewardFileError(f"{source}: key 'bias' is {bias!r}; expected a finite number")
    for trait_id, weight in weights.items():
        if not np.isfinite(weight):
            raise RewardFileError(
                f"{source}: key 'weights.{trait_id}' is {weight!r}; expected a finite number"
            )
    n_levels = scale[1] - scale[0] + 1
    for trait_id, shape in shapes.items():
        values = np.asarray(shape, dtype=float)
        if values.shape != (n_levels,):
            raise RewardFileError(
                f"{source}: key 'shapes.{trait_id}' has {values.size} values for the "
                f"{n_levels} levels of the scale {scale[0]}-{scale[1]}"
            )
        if not np.isfinite(values).all():
            raise RewardFileError(
                f"{source}: key 'shapes.{trait_id}' holds {list(shape)}; expected finite numbers"
            )


def check_rating_columns(
    frame: pd.DataFrame, trait_ids: Sequence[str], scale: tuple[int, int]
) -> pd.DataFrame:
    """``frame[trait_ids]`` as floats, or a :class:`RatingsError` naming the first bad cells.

    Rules: a rating is a number (not text), present (not NaN), and on the scale (min..max).
    Rows are named by the ``_row`` column when the frame has one (1-based data row of the
    source file), else by index label.
    """
    source = frame.attrs.get("source", "ratings")
    rows = frame[ROW_COLUMN] if ROW_COLUMN in frame.columns else pd.Series(frame.index, frame.index)
    checked = {}
    problems: list[str] = []
    for trait_id in trait_ids:
        raw = frame[trait_id]
        values = pd.to_numeric(raw, errors="coerce").astype(float)
        absent = raw.isna().to_numpy()
        text = values.isna().to_numpy() & ~absent
        off = ~(values.between(scale[0], scale[1])).to_numpy() & ~absent & ~text
        for mask, rule in (
            (text, "is not a number"),
            (absent, "is missing (NaN)"),
            (off, f"is off the rating scale {scale[0]}-{scale[1]}"),
        ):
            for position in np.flatnonzero(mask)[:3]:
                value = raw.iloc[position]
                value = value.item() if isinstance(value, np.generic) else value
                problems.append(f"row {rows.iloc[position]} column {trait_id}: {value!r} {rule}")
        checked[trait_id] = values.to_numpy()
    if problems:
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise RatingsError(
            f"{source}: {shown}{more} (rule: a rating is a number on the scale "
            f"{scale[0]}-{scale[1]})"
        )
    return pd.DataFrame(checked, index=frame.index)


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
    """The paper's protocol: mean accuracy of KFold(shuffle) over rows, once per seed.

    A repeated seed (the published list has four) repeats its figure without refitting.
    """
    values = X.to_numpy(float)
    by_seed: dict[int, float] = {}
    for seed in dict.fromkeys(seeds):
        fold_scores = []
        for train, test in KFold(folds, shuffle=True, random_state=seed).split(values):
            model = _fit_l1(values[train], y[train], C)
            fold_scores.append(model.score(values[test], y[test]))
        by_seed[seed] = float(np.mean(fold_scores))
    return np.asarray([by_seed[seed] for seed in seeds])


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
    for train, test in grouped_folds(groups, folds, seed):
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
    grouped_curves: HeldOutCurves
    """ROC and calibration of ``grouped_scores`` (AUC, Brier score, ECE)."""

    def metrics(self) -> dict[str, float]:
        return {
            "cv.accuracy.mean": float(self.paper_cv_accuracies.mean()),
            "cv.accuracy.std": float(self.paper_cv_accuracies.std()),
            "cv_refit.accuracy": self.refit_cv_accuracy,
            "cv_grouped.accuracy": self.grouped_cv_accuracy,
            **self.grouped_curves.metrics("cv_grouped"),
            "paired.accuracy": self.paired_accuracy,
            "n_selected": float(len(self.selected_trait_ids)),
        }


def fit_reward(
    witnesses: pd.DataFrame,
    trait_ids: Sequence[str],
    config: RewardConfig,
    scale: tuple[int, int] = (1, 5),
) -> RewardFit:
    """Fit and evaluate the HL reward on a witness table (``is_human``, ``game_id``, trait ids).

    (a) the paper's protocol: row-wise KFold accuracy of the all-trait model, per seed, and of
    the refit on the selected traits (one seed); (b) game-grouped KFold of the whole procedure,
    selection included, so no game's witnesses straddle train and test, with the ROC and
    calibration of its out-of-fold scores; (c) paired accuracy of those scores.
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
        reward=fitted.to_reward(scale=scale),
        full_weights={k: float(v) for k, v in fitted.full_coef_.items()},
        full_bias=fitted.full_intercept_,
        selected_trait_ids=list(fitted.selected_trait_ids_),
        paper_cv_accuracies=paper,
        refit_cv_accuracy=float(refit),
        grouped_cv_accuracy=float(((grouped > 0).astype(int) == y).mean()),
        paired_accuracy=paired_accuracy(grouped, y, groups),
        grouped_scores=grouped,
        train_scores=fitted.decision_function(X),
        grouped_curves=held_out_curves(grouped, y),
    )
