"""The fit_reward plots: full trait labels (wrapped, never cut mid-word), intervals drawn."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from hal_core.questionnaire import Questionnaire, Trait
from hal_core.reward import RewardConfig, fit_reward
from hal_core.stability import StabilityConfig, reward_weight_intervals, stability_table
from tasks.reward import _calibration_figure, _heatmap, _roc_figure, _weights_figure

TEXTS = {
    "t01": "Demonstrates typos, uneven punctuation, and informal grammar typical of rapid "
    "texting in a conversation that runs on and on.",
    "t02": "Uses slang.",
    "t03": "Maintains topic focus and actively steers conversation (not just mirroring or "
    "deflecting).",
    "t04": "Incorporates emojis, emoticons, or playful elongations.",
}


def _witnesses(n_games: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for game in range(n_games):
        for is_human in (1, 0):
            ratings = rng.integers(1, 6, size=4).astype(float)
            ratings[0] = np.clip(ratings[0] + (2 if is_human else -2), 1, 5)
            ratings[2] = np.clip(ratings[2] - (1 if is_human else -1), 1, 5)
            rows.append([game, is_human, *ratings])
    return pd.DataFrame(rows, columns=["game_id", "is_human", *TEXTS])


def _tick_words(axis) -> list[str]:
    return " ".join(tick.get_text() for tick in axis.get_yticklabels()).split()


def test_every_plot_labels_traits_by_id_with_their_whole_text():
    questionnaire = Questionnaire(
        name="plots", traits=tuple(Trait(id=i, text=t) for i, t in TEXTS.items())
    )
    witnesses = _witnesses()
    config = RewardConfig(cv_folds=3, paper_cv_seeds=(1,))
    fit = fit_reward(witnesses, list(TEXTS), config)
    # three bootstraps: percentile intervals that may miss the estimate must still draw
    intervals = reward_weight_intervals(witnesses, list(TEXTS), fit.selected_trait_ids, 3, 0, 1.0)
    weights = _weights_figure(fit, intervals, questionnaire, 0.2)
    table = stability_table({"a": witnesses}, list(TEXTS), StabilityConfig(n_bootstraps=3))
    heatmap = _heatmap(table, 0.6, ["t01"], questionnaire.texts())
    for figure in (weights, heatmap):
        axis = figure.axes[0]
        words = _tick_words(axis)
        expected = " ".join(f"{i}: {t}" for i, t in TEXTS.items()).split()
        assert [w for w in words if w != "*"] == expected  # every word whole, in id order
        for tick in axis.get_yticklabels():  # wrapped onto lines, none of them overlong
            assert max(len(line) for line in tick.get_text().splitlines()) <= 56
        assert any("\n" in tick.get_text() for tick in axis.get_yticklabels())
        figure.canvas.draw()
        plt.close(figure)
    curves = fit.grouped_curves
    roc = _roc_figure(curves, "ROC")
    legend = [text.get_text() for text in roc.axes[0].get_legend().get_texts()]
    assert f"AUC {curves.auc:.3f}" in legend
    calibration = _calibration_figure(curves, "calibration")
    assert f"Brier {curves.brier:.3f}, ECE {curves.ece:.3f}" in calibration.axes[0].get_title()
    for figure in (roc, calibration):
        figure.canvas.draw()
        plt.close(figure)
