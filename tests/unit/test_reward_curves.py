"""ROC and calibration of held-out reward scores: AUC, reliability bins, Brier score, ECE."""

import numpy as np
import pytest

from hal_core.reward_curves import calibration_table, held_out_curves, roc_table


def _logistic_sample(n: int, seed: int, scale: float = 1.0):
    """Labels drawn with P(human) = sigmoid(score); ``scale`` over- or under-states scores."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(0, 2, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-scores))).astype(int)
    return scale * scores, labels


def test_separated_scores_have_auc_one_and_the_roc_spans_the_square():
    scores = np.array([-3.0, -2.0, -1.5, 0.5, 1.0, 4.0])
    labels = np.array([0, 0, 0, 1, 1, 1])
    curves = held_out_curves(scores, labels)
    assert curves.auc == pytest.approx(1.0, abs=1e-12)
    roc = roc_table(scores, labels)
    first, last = roc.iloc[0], roc.iloc[-1]
    assert (first.false_positive_rate, first.true_positive_rate) == pytest.approx((0, 0))
    assert (last.false_positive_rate, last.true_positive_rate) == pytest.approx((1, 1))
    reversed_curves = held_out_curves(-scores, labels)
    assert reversed_curves.auc == pytest.approx(0.0, abs=1e-12)


def test_calibrated_scores_have_a_small_ece_and_overconfident_ones_a_large_one():
    scores, labels = _logistic_sample(20000, seed=0)
    calibrated = held_out_curves(scores, labels)
    overconfident = held_out_curves(*_logistic_sample(20000, seed=0, scale=4.0))
    assert calibrated.ece < 0.02
    assert overconfident.ece > 0.08
    probabilities = 1 / (1 + np.exp(-scores))
    assert calibrated.brier == pytest.approx(np.mean((probabilities - labels) ** 2), rel=1e-9)
    # scaling the scores keeps their order: the same AUC, a worse calibration
    assert overconfident.auc == pytest.approx(calibrated.auc, abs=1e-12)
    assert overconfident.brier > calibrated.brier


def test_calibration_bins_count_every_witness_and_leave_empty_bins_blank():
    probabilities = np.array([0.0, 0.05, 0.12, 0.95, 1.0, 1.0])
    labels = np.array([0, 0, 1, 1, 1, 0])
    table = calibration_table(probabilities, labels, n_bins=10)
    assert len(table) == 10 and table.n.sum() == 6
    assert list(table.n) == [2, 1, 0, 0, 0, 0, 0, 0, 0, 3]  # p = 1.0 falls in the last bin
    assert table.loc[9, "fraction_human"] == pytest.approx(2 / 3)
    assert table.loc[9, "mean_predicted"] == pytest.approx((0.95 + 1 + 1) / 3)
    assert table.loc[2:8, "fraction_human"].isna().all()
    assert table.bin_low.iloc[0] == pytest.approx(0) and table.bin_high.iloc[-1] == pytest.approx(1)


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([0.1, np.nan, 0.3], [1, 0, 1], "NaN or infinite"),
        ([0.1, 0.2, 0.3], [1, 1, 1], "both human"),
        ([0.1, 0.2], [1, 0, 1], "one each"),
    ],
)
def test_scores_that_cannot_make_a_curve_are_refused(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        held_out_curves(np.array(scores), np.array(labels))
