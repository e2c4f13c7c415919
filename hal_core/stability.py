"""Stability selection of reward traits across game-level bootstraps and judges.

A trait that the paper's procedure (L1 logistic, keep ``|w| > 0.2``) selects on one fit of one
judge's ratings may owe its place to a few games or to that judge. Here the procedure is
repeated on game-level bootstraps (a game's two witnesses are drawn together) of every judge's
ratings; a trait's *selection probability* is the share of bootstraps that keep it. The
*stable set* is the traits whose probability reaches ``threshold`` for **every** judge.

Bootstraps are drawn once per seed over the sorted game ids and shared by every judge, so two
judges are compared on the same resampled games. A bootstrap is fitted with integer sample
weights (how often each game was drawn) rather than repeated rows: the same objective, fewer
rows for liblinear.

The same bootstraps give each trait weight a confidence interval (:func:`weight_intervals`):
the percentile interval of the weight over the bootstrap fits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from hal_core.reward import l1_logistic


class StabilityConfig(BaseModel):
    """How selection probabilities and the stable set are computed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_bootstraps: int = Field(default=100, ge=1, description="Game-level bootstraps per judge.")
    seed: int = Field(default=0, description="Seed of the bootstrap draws (shared by judges).")
    threshold: float = Field(
        default=0.6,
        gt=0,
        le=1,
        description="A trait is stable when its selection probability reaches this for every "
        "judge (0.6, the low end of Meinshausen and Buehlmann's 0.6-0.9: requiring it of every "
        "judge is already strict).",
    )
    C: float = Field(default=1.0, gt=0, description="Inverse L1 strength of each bootstrap fit.")
    selection_threshold: float = Field(
        default=0.2, ge=0, description="A bootstrap selects traits whose |weight| exceeds this."
    )


def bootstrap_games(game_ids: Sequence, n_bootstraps: int, seed: int) -> list[pd.Series]:
    """Per bootstrap: how many times each game (sorted ids) was drawn, with replacement."""
    games = np.sort(pd.unique(np.asarray(game_ids)))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_bootstraps):
        counts = np.bincount(rng.integers(0, len(games), len(games)), minlength=len(games))
        draws.append(pd.Series(counts, index=games))
    return draws


def l1_weights(X: pd.DataFrame, y: np.ndarray, weights: np.ndarray, C: float) -> np.ndarray:
    """Weights of the L1 fit on ``X``'s columns, each row counted ``weights`` times."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        model = l1_logistic(C).fit(X.to_numpy(float), y, sample_weight=weights)
    return model.coef_[0]


def selected_traits(
    X: pd.DataFrame, y: np.ndarray, weights: np.ndarray, C: float, threshold: float
) -> np.ndarray:
    """Boolean mask over ``X``'s columns: |weight| of the all-trait L1 fit > threshold."""
    return np.abs(l1_weights(X, y, weights, C)) > threshold


def bootstrap_weights(
    witnesses: pd.DataFrame, trait_ids: Sequence[str], n_bootstraps: int, seed: int, C: float
) -> pd.DataFrame:
    """The L1 fit's weights (columns: trait ids, sorted) on each game-level bootstrap (rows)."""
    trait_ids = sorted(trait_ids)  # liblinear depends on column order; ids fix it
    games = witnesses["game_id"].to_numpy()
    y = witnesses["is_human"].to_numpy(int)
    X = witnesses[trait_ids]
    rows = []
    for draw in bootstrap_games(games, n_bootstraps, seed):
        weights = draw.reindex(games).to_numpy(float)
        keep = weights > 0
        rows.append(l1_weights(X[keep], y[keep], weights[keep], C))
    return pd.DataFrame(rows, columns=trait_ids).rename_axis("bootstrap")


def selection_probability(
    witnesses: pd.DataFrame, trait_ids: Sequence[str], config: StabilityConfig
) -> pd.Series:
    """Share of game-level bootstraps in which each trait is selected (index: trait id)."""
    draws = bootstrap_weights(witnesses, trait_ids, config.n_bootstraps, config.seed, config.C)
    selected = (draws.abs() > config.selection_threshold).sum(axis=0).to_numpy(float)
    return pd.Series(
        selected / config.n_bootstraps, index=list(draws.columns), name="selection_probability"
    )


def weight_intervals(
    witnesses: pd.DataFrame,
    trait_ids: Sequence[str],
    n_bootstraps: int,
    seed: int,
    C: float,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Per trait id (index, sorted): the weight of the L1 fit on every game (``weight``) and
    the percentile interval of its bootstrap weights (``ci_low``, ``ci_high``).

    The traits are held fixed: for a refit on selected traits the interval says how much the
    games move the weights, not how often the selection would change (that is
    :func:`selection_probability`).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    trait_ids = sorted(trait_ids)
    everyone = np.ones(len(witnesses))
    full = l1_weights(witnesses[trait_ids], witnesses["is_human"].to_numpy(int), everyone, C)
    draws = bootstrap_weights(witnesses, trait_ids, n_bootstraps, seed, C)
    tail = (1 - confidence) / 2
    low, high = np.quantile(draws.to_numpy(), [tail, 1 - tail], axis=0)
    table = pd.DataFrame({"weight": full, "ci_low": low, "ci_high": high}, index=trait_ids)
    return table.rename_axis("trait_id")


def reward_weight_intervals(
    witnesses: pd.DataFrame,
    trait_ids: Sequence[str],
    selected_ids: Sequence[str],
    n_bootstraps: int,
    seed: int,
    C: float,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """The paper's two fits with intervals, on the same bootstraps: ``full_*`` for the all-trait
    fit (every trait id), ``selected_*`` for the refit on ``selected_ids`` (NaN elsewhere)."""
    full = weight_intervals(witnesses, trait_ids, n_bootstraps, seed, C, confidence)
    refit = weight_intervals(witnesses, selected_ids, n_bootstraps, seed, C, confidence)
    return full.add_prefix("full_").join(refit.add_prefix("selected_"))


def stability_table(
    judges: Mapping[str, pd.DataFrame], trait_ids: Sequence[str], config: StabilityConfig
) -> pd.DataFrame:
    """Selection probability of each trait (rows, by id) under each judge's ratings (columns).

    Every judge's witnesses are bootstrapped on the same draws of the games they share.
    """
    if not judges:
        raise ValueError("stability selection needs at least one judge's ratings")
    shared = set.intersection(*(set(frame["game_id"]) for frame in judges.values()))
    columns = {}
    for judge, frame in judges.items():
        missing = [t for t in trait_ids if t not in frame.columns]
        if missing:
            raise KeyError(f"judge {judge!r}: ratings lack traits {missing}")
        columns[judge] = selection_probability(
            frame[frame["game_id"].isin(shared)], trait_ids, config
        )
    table = pd.DataFrame(columns)
    table.index.name = "trait_id"
    return table


def stable_set(table: pd.DataFrame, threshold: float) -> list[str]:
    """Traits whose selection probability reaches ``threshold`` under every judge, by id."""
    return sorted(table.index[(table >= threshold).all(axis=1)])
