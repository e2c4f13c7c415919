"""Guarded reward promotion: @champion moves only to a challenger at least as good on the
fixed check set, and never to one the check set cannot score."""

from __future__ import annotations

import pandas as pd

from hal_core.reward import HLReward
from hal_core.reward_promotion import check_set_accuracy, decide_reward_promotion


def witnesses() -> pd.DataFrame:
    # 4 games: humans rate high on t01; t02 is noise that ranks the AI higher in games 0 and 1
    rows = []
    for game in range(4):
        rows.append({"game_id": game, "is_human": 1, "t01": 4, "t02": 1 if game < 2 else 5})
        rows.append({"game_id": game, "is_human": 0, "t01": 2, "t02": 4 if game < 2 else 1})
    return pd.DataFrame(rows)


GOOD = HLReward(weights={"t01": 1.0}, bias=0.0)
NOISY = HLReward(weights={"t02": 1.0}, bias=0.0)
FOREIGN = HLReward(weights={"d07": 1.0}, bias=0.0)


def decide(challenger, champion):
    return decide_reward_promotion(challenger, champion, witnesses(), "check.csv", "abc123", "3")


def test_check_set_accuracy_is_paired_accuracy_by_trait_id():
    assert check_set_accuracy(GOOD, witnesses()) == 1.0
    assert check_set_accuracy(NOISY, witnesses()) == 0.5
    assert check_set_accuracy(FOREIGN, witnesses()) is None


def test_a_better_or_equal_challenger_is_promoted_a_worse_one_is_not():
    assert decide(GOOD, NOISY).promote
    assert decide(GOOD, GOOD).promote
    worse = decide(NOISY, GOOD)
    assert not worse.promote
    assert "0.5000 is worse than the champion's 1.0000 (v3) on check.csv@abc123" in worse.reason
    assert (worse.challenger_paired_accuracy, worse.champion_paired_accuracy) == (0.5, 1.0)


def test_the_first_version_is_promoted_and_an_unscorable_challenger_never_replaces_one():
    assert decide(FOREIGN, None).promote
    assert not decide(FOREIGN, GOOD).promote
    assert decide(GOOD, FOREIGN).promote
