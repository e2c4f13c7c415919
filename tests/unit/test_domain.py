"""The out-of-domain signal: calibration, far points, fractions and pair masks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hal_core.domain import (
    DomainConfig,
    DomainReference,
    both_out_of_domain,
    out_of_domain_fraction,
)
from hal_core.judging import RatingResult


def _cloud(seed: int, n: int, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 8)) + shift


def test_fresh_in_domain_points_are_flagged_at_about_the_quantile_and_far_ones_always() -> None:
    train = _cloud(0, 600)
    groups = np.repeat(np.arange(200), 3)  # three rows per prompt, left out of calibration
    reference = DomainReference.fit(train, groups, DomainConfig(k=10, quantile=0.9))
    fresh = reference.distance(_cloud(1, 2000))
    assert 0.03 < (fresh > 1).mean() < 0.2
    far = reference.distance(_cloud(2, 100, shift=6.0))
    assert (far > 1).all() and far.min() > fresh.max()
    # a training row is close to itself and its own group: below the calibration distance
    assert np.median(reference.distance(train[:50])) < np.median(fresh)


def test_reference_keeps_at_most_max_points_and_rejects_too_little_data() -> None:
    reference = DomainReference.fit(_cloud(0, 500), None, DomainConfig(max_points=100))
    assert reference.points_.shape == (100, 8) and reference.points_.dtype == np.float32
    with pytest.raises(ValueError, match="at least two"):
        DomainReference.fit(_cloud(0, 1), None)


def test_fraction_reads_results_and_columns_and_ignores_unrated() -> None:
    results = [
        RatingResult(item_id="a", ratings={"t01": 1.0}, domain_distance=0.5, out_of_domain=False),
        RatingResult(item_id="b", ratings={"t01": 1.0}, domain_distance=1.5, out_of_domain=True),
        RatingResult(item_id="c", error="no rated speaker", error_kind="input"),
    ]
    assert out_of_domain_fraction(results) == 0.5
    column = pd.array([True, None, False, False], dtype="boolean")
    assert out_of_domain_fraction(column) == pytest.approx(1 / 3)
    assert np.isnan(out_of_domain_fraction([RatingResult(item_id="x", ratings={})]))


def test_pairs_are_dropped_only_when_both_dialogues_are_out_of_domain() -> None:
    chosen = [True, True, False, None]
    rejected = [True, False, True, True]
    assert both_out_of_domain(chosen, rejected).tolist() == [True, False, False, False]
    with pytest.raises(ValueError, match="2 first dialogues for 1"):
        both_out_of_domain([True, True], [True])
