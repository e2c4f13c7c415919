"""Cross-validation folds grouped by the unit that is new in use (a game, a prompt, a person)."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import GroupKFold


def grouped_folds(
    groups: np.ndarray, n_splits: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled GroupKFold splits: no group on both sides of a split, the same folds for a seed
    (the reward's grouped CV, the comparison and the local judge share them)."""
    splitter = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(groups)), groups=groups))
