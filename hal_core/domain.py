"""How far a dialogue lies from a judge's training data, and what callers do with that.

A judge fitted on some generators' dialogues is only trustworthy near them. :class:`DomainReference`
measures a dialogue's mean distance to its ``k`` nearest training dialogues in the judge's feature
space (each feature standardised on those training dialogues and weighed by its block, as the
judge weighs it) and divides it by the distance that a fresh in-domain dialogue reaches: the
``quantile`` of the same measure over the training dialogues, each taken against the training
dialogues of *other* groups (another prompt or game), as a new dialogue would be. So
``domain_distance`` is 1 at that quantile and ``out_of_domain`` (distance > 1) flags about
``1 - quantile`` of fresh in-domain dialogues and most dialogues unlike anything seen in training.

A judge trained on two domains keeps one reference per domain and measures a dialogue against
the domain it is rated as (by its speaker tags: a doctor's visit against the doctor's visits).
One joint reference would not do: the Turing witnesses' spread (humans texting, LLM personas
writing paragraphs) made long LLM-written doctor's visits look in domain (1-2% flagged) where
the doctor's-visit reference flags most of them (about 80%; measured, see the issue report).

Every judge's :class:`~hal_core.judging.RatingResult` may carry ``domain_distance`` and
``out_of_domain`` (the local judge fills them; other backends leave them None);
:func:`out_of_domain_fraction` and :func:`both_out_of_domain` are what the rating, alignment and
evaluation stages log and what preference building may drop.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

DOMAIN_DISTANCE_COLUMN = "domain_distance"
"""Column of a ratings table: distance to the judge's training data (1 = the in-domain quantile)."""
OUT_OF_DOMAIN_COLUMN = "out_of_domain"
"""Column of a ratings table: True when ``domain_distance`` > 1 (None when not rated)."""


class DomainConfig(BaseModel):
    """How the out-of-domain signal is calibrated."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    k: int = Field(default=10, ge=1, description="Nearest training dialogues averaged.")
    quantile: float = Field(
        default=0.95,
        gt=0.5,
        lt=1.0,
        description="In-domain quantile that maps to distance 1: about 1 - quantile of fresh "
        "in-domain dialogues are flagged.",
    )
    max_points: int = Field(
        default=3000, ge=50, description="Training dialogues kept as reference (evenly spaced)."
    )


@dataclass
class DomainReference:
    """Training rows in the judge's feature space and the distance that counts as in domain."""

    mean_: np.ndarray
    scale_: np.ndarray
    points_: np.ndarray
    sq_norms_: np.ndarray
    threshold_: float
    k: int
    quantile: float

    @classmethod
    def fit(
        cls,
        X: np.ndarray,
        groups: Sequence[Any] | None,
        config: DomainConfig | None = None,
        feature_weights: np.ndarray | None = None,
    ) -> DomainReference:
        """Reference rows ``X`` (raw features); each feature is standardised on them and
        multiplied by ``feature_weights`` (the judge's block weights; default 1). ``groups``
        keeps a row's own prompt or game out of its calibration distance (None: only the row
        itself is left out)."""
        config = config or DomainConfig()
        X = np.asarray(X, dtype=np.float64)
        if len(X) < 2:
            raise ValueError("the out-of-domain reference needs at least two training dialogues")
        std = X.std(axis=0)
        weights = np.ones(X.shape[1]) if feature_weights is None else np.asarray(feature_weights)
        mean, scale = X.mean(axis=0), weights / np.where(std > 1e-12, std, 1.0)
        Z = (X - mean) * scale
        group_codes = (
            np.unique(np.asarray(groups).astype(str), return_inverse=True)[1]
            if groups is not None
            else np.arange(len(Z))
        )
        keep = np.unique(np.linspace(0, len(Z) - 1, min(config.max_points, len(Z))).astype(int))
        points, codes = Z[keep], group_codes[keep]
        k = min(config.k, len(points) - 1)
        distances = _pairwise(points, points, _sq_norms(points))
        distances[codes[:, None] == codes[None, :]] = np.inf
        finite = np.isfinite(distances).sum(axis=1)
        usable = finite >= k
        if not usable.any():
            raise ValueError("every reference dialogue shares its group with too many others")
        nearest = np.sort(distances[usable], axis=1)[:, :k].mean(axis=1)
        threshold = float(np.quantile(nearest, config.quantile))
        points32 = points.astype(np.float32)
        return cls(
            mean, scale, points32, _sq_norms(points32), max(threshold, 1e-12), k, config.quantile
        )

    def raw_distance(self, X: np.ndarray) -> np.ndarray:
        """Mean Euclidean distance to the ``k`` nearest reference rows (raw feature rows in)."""
        Z = (np.asarray(X, dtype=np.float64) - self.mean_) * self.scale_
        if len(Z) == 0:
            return np.zeros(0)
        distances = _pairwise(Z, self.points_.astype(np.float64), self.sq_norms_)
        k = min(self.k, distances.shape[1])
        return np.partition(distances, k - 1, axis=1)[:, :k].mean(axis=1)

    def distance(self, X: np.ndarray) -> np.ndarray:
        """``raw_distance / threshold``: above 1 is out of domain."""
        return self.raw_distance(X) / self.threshold_


def _sq_norms(points: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", points, points).astype(np.float64)


def _pairwise(a: np.ndarray, b: np.ndarray, b_sq_norms: np.ndarray) -> np.ndarray:
    squared = _sq_norms(a)[:, None] - 2.0 * (a @ b.T) + b_sq_norms[None, :]
    return np.sqrt(np.maximum(squared, 0.0))


def _flags(items: Iterable[Any]) -> list[bool | None]:
    flags: list[bool | None] = []
    for item in items:
        value = getattr(item, OUT_OF_DOMAIN_COLUMN, item)
        flags.append(None if value is None or pd.isna(value) else bool(value))
    return flags


def out_of_domain_fraction(items: Iterable[Any]) -> float:
    """Share of flagged items among those that carry the flag: ``RatingResult`` objects, or the
    values of an ``out_of_domain`` column (None/NaN/NA = not rated, ignored). NaN when none has
    a flag (e.g. a judge without an out-of-domain signal)."""
    known = [flag for flag in _flags(items) if flag is not None]
    return float(np.mean(known)) if known else float("nan")


def both_out_of_domain(first: Iterable[Any], second: Iterable[Any]) -> np.ndarray:
    """Mask of pairs whose two dialogues are both flagged out of domain (a missing flag is not
    a flag); a preference built on two dialogues the judge cannot vouch for can be dropped."""
    a, b = _flags(first), _flags(second)
    if len(a) != len(b):
        raise ValueError(f"{len(a)} first dialogues for {len(b)} second dialogues")
    return np.array([bool(x) and bool(y) for x, y in zip(a, b, strict=True)], dtype=bool)
