"""How well a reward's held-out scores rank and how well they are calibrated.

The scores are out-of-fold: each witness scored by a model fitted without its game (the
game-grouped CV of :func:`hal_core.reward.fit_reward`). The ROC curve and its AUC say how well
the score ranks human above AI witnesses; the reliability table says whether the logistic
model's probability ``sigmoid(score)`` is the share of humans among witnesses given it. The
Brier score is the mean squared error of that probability; the expected calibration error
(ECE) is the witness-weighted mean gap between predicted and observed share over equal-width
probability bins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.metrics import brier_score_loss, roc_auc_score, roc_curve

CALIBRATION_BINS = 10
"""Equal-width probability bins of the reliability table."""


def _checked(scores: np.ndarray, is_human: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(is_human, dtype=int)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must be 1-d, one each")
    if not np.isfinite(scores).all():
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} scores are NaN or infinite")
    if set(np.unique(labels)) != {0, 1}:
        raise ValueError("the labels must hold both human (1) and AI (0) witnesses, nothing else")
    return scores, labels


def roc_table(scores: np.ndarray, is_human: np.ndarray) -> pd.DataFrame:
    """The ROC curve: one row per threshold, from (0, 0) to (1, 1)."""
    scores, labels = _checked(scores, is_human)
    fpr, tpr, thresholds = roc_curve(labels, scores)
    return pd.DataFrame(
        {"threshold": thresholds, "false_positive_rate": fpr, "true_positive_rate": tpr}
    )


def calibration_table(
    probabilities: np.ndarray, is_human: np.ndarray, n_bins: int = CALIBRATION_BINS
) -> pd.DataFrame:
    """One row per equal-width bin of ``[0, 1]``: its edges, witnesses in it, their mean
    predicted probability and the share of them that are human (NaN for an empty bin)."""
    probabilities, labels = _checked(probabilities, is_human)
    if ((probabilities < 0) | (probabilities > 1)).any():
        raise ValueError("probabilities must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.digitize(probabilities, edges[1:-1]), 0, n_bins - 1)
    frame = pd.DataFrame({"bin": index, "p": probabilities, "y": labels})
    grouped = frame.groupby("bin").agg(n=("p", "size"), mean_predicted=("p", "mean"),
                                       fraction_human=("y", "mean"))  # fmt: skip
    table = grouped.reindex(range(n_bins)).assign(
        bin_low=edges[:-1], bin_high=edges[1:], n=lambda t: t.n.fillna(0).astype(int)
    )
    columns = ["bin_low", "bin_high", "n", "mean_predicted", "fraction_human"]
    return table.rename_axis("bin")[columns].reset_index()


def expected_calibration_error(table: pd.DataFrame) -> float:
    """Witness-weighted mean |predicted - observed| over the bins of a calibration table."""
    filled = table[table.n > 0]
    gaps = (filled.mean_predicted - filled.fraction_human).abs()
    return float((gaps * filled.n).sum() / filled.n.sum())


@dataclass(frozen=True)
class HeldOutCurves:
    """ROC and reliability of out-of-fold scores, with their one-number summaries."""

    roc: pd.DataFrame
    calibration: pd.DataFrame
    auc: float
    brier: float
    ece: float

    def metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}.auc": self.auc, f"{prefix}.brier": self.brier, f"{prefix}.ece": self.ece}


def held_out_curves(
    scores: np.ndarray, is_human: np.ndarray, n_bins: int = CALIBRATION_BINS
) -> HeldOutCurves:
    """ROC, AUC, reliability table, Brier score and ECE of out-of-fold logistic scores."""
    scores, labels = _checked(scores, is_human)
    probabilities = expit(scores)
    calibration = calibration_table(probabilities, labels, n_bins)
    return HeldOutCurves(
        roc=roc_table(scores, labels),
        calibration=calibration,
        auc=float(roc_auc_score(labels, scores)),
        brier=float(brier_score_loss(labels, probabilities)),
        ece=expected_calibration_error(calibration),
    )
