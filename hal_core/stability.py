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


def selected_traits(
    X: pd.DataFrame, y: np.ndarray, weights: np.ndarray, C: float, threshold: float
) -> np.ndarray:
    """Boolean mask over ``X``'s columns: |weight| of the all-trait L1 fit > threshold."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        model = l1_logistic(C).fit(X.to_numpy(float), y, sample_weight=weights)
    return np.abs(model.coef_[0]) > threshold


def selection_probability(
    witnesses: pd.DataFrame, trait_ids: Sequence[str], config: StabilityConfig
) -> pd.Series:
    """Share of game-level bootstraps in which each trait is selected (index: trait id)."""
    trait_ids = sorted(trait_ids)  # liblinear depends on column order; ids fix it
    games = witnesses["game_id"].to_numpy()
    y = witnesses["is_human"].to_numpy(int)
    X = witnesses[trait_ids]
    counts = np.zeros(len(trait_ids))
    for draw in bootstrap_games(games, config.n_bootstraps, config.seed):
        weights = draw.reindex(games).to_numpy(float)
        keep = weights > 0
        counts += selected_traits(
            X[keep], y[keep], weights[keep], config.C, config.selection_threshold
        )
    return pd.Series(counts / config.n_bootstraps, index=trait_ids, name="selection_probability")


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
