"""Guarded promotion of a refitted reward: the challenger takes ``@champion`` only when it is
at least as good as the champion on a fixed, versioned check set.

The check set is a Turing ratings table that no reward is fitted on by default (GPT-5-mini's
ratings of the same games), read as witnesses by trait id; its version is the file's sha256.
The figure is paired accuracy: the share of games whose human witness scores above the AI.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from hal_core.reward import HLReward, paired_accuracy


class RewardPromotion(BaseModel):
    """Whether the challenger becomes the champion, with the figures behind it."""

    model_config = ConfigDict(frozen=True)

    promote: bool
    reason: str
    check_set: str = Field(description="The check set's file.")
    check_version: str = Field(description="sha256 of the check set's file (first 12).")
    challenger_paired_accuracy: float | None
    champion_paired_accuracy: float | None
    champion_version: str | None = Field(
        default=None,
        description="Registry version that held the alias when checked, as a string (`3`), "
        "the one type of a model version in hal; None when no version held it.",
    )


def check_set_accuracy(reward: HLReward, witnesses: pd.DataFrame) -> float | None:
    """Paired accuracy of ``reward`` on the check set's witnesses; None when the set lacks a
    trait the reward weighs."""
    if not set(reward.trait_ids) <= set(witnesses.columns):
        return None
    scores = reward.score(witnesses[list(reward.trait_ids)].astype(float))
    return paired_accuracy(
        np.asarray(scores), witnesses["is_human"].to_numpy(), witnesses["game_id"].to_numpy()
    )


def decide_reward_promotion(
    challenger: HLReward,
    champion: HLReward | None,
    witnesses: pd.DataFrame,
    check_set: str,
    check_version: str,
    champion_version: str | None = None,
    tolerance: float = 0.0,
) -> RewardPromotion:
    """Promote when there is no champion, or when the challenger's paired accuracy on the
    check set is at least the champion's minus ``tolerance``; never when the challenger
    cannot be scored on the check set while a champion exists."""
    mine = check_set_accuracy(challenger, witnesses)
    theirs = check_set_accuracy(champion, witnesses) if champion is not None else None
    figures = {
        "check_set": check_set,
        "check_version": check_version,
        "challenger_paired_accuracy": mine,
        "champion_paired_accuracy": theirs,
        "champion_version": champion_version,
    }
    if champion is None:
        return RewardPromotion(promote=True, reason="no champion yet", **figures)
    if mine is None:
        reason = "the challenger weighs traits the check set does not rate"
        return RewardPromotion(promote=False, reason=reason, **figures)
    if theirs is None:
        reason = "the champion cannot be scored on the check set; the challenger can"
        return RewardPromotion(promote=True, reason=reason, **figures)
    promote = mine >= theirs - tolerance
    verdict = "at least as good as" if promote else "worse than"
    reason = (
        f"challenger paired accuracy {mine:.4f} is {verdict} the champion's {theirs:.4f} "
        f"(v{champion_version}) on {check_set}@{check_version}"
    )
    return RewardPromotion(promote=promote, reason=reason, **figures)
