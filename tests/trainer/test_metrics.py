"""Metrics agree with brute-force definitions and survive the corner cases of a stream."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.metrics import SlidingWindowMetrics, auc, gauc, logloss


def brute_auc(labels: list[int], scores: list[float]) -> float:
    pos = [s for y, s in zip(labels, scores, strict=True) if y == 1]
    neg = [s for y, s in zip(labels, scores, strict=True) if y == 0]
    if not pos or not neg:
        return math.nan
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def brute_gauc(labels: list[int], scores: list[float], groups: list[int]) -> float:
    total, weight = 0.0, 0.0
    for g in set(groups):
        idx = [i for i, x in enumerate(groups) if x == g]
        a = brute_auc([labels[i] for i in idx], [scores[i] for i in idx])
        if not math.isnan(a):
            total, weight = total + a * len(idx), weight + len(idx)
    return total / weight if weight else math.nan


# Few distinct score values so that ties are frequent.
samples = st.lists(
    st.tuples(st.integers(0, 1), st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]), st.integers(0, 3)),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(samples)
def test_auc_and_gauc_match_brute_force(rows: list[tuple[int, float, int]]) -> None:
    y, s, g = [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
    np.testing.assert_allclose(auc(y, s), brute_auc(y, s), equal_nan=True)
    np.testing.assert_allclose(gauc(y, s, g), brute_gauc(y, s, g), equal_nan=True)


@settings(max_examples=50, deadline=None)
@given(samples, st.randoms(use_true_random=False))
def test_auc_is_independent_of_input_order(
    rows: list[tuple[int, float, int]], rnd: random.Random
) -> None:
    shuffled = rows[:]
    rnd.shuffle(shuffled)
    a = [auc([r[0] for r in x], [r[1] for r in x]) for x in (rows, shuffled)]
    b = [gauc([r[0] for r in x], [r[1] for r in x], [r[2] for r in x]) for x in (rows, shuffled)]
    np.testing.assert_allclose(a[0], a[1], equal_nan=True)
    np.testing.assert_allclose(b[0], b[1], equal_nan=True)


def test_one_class_and_empty_windows_give_nan() -> None:
    assert math.isnan(auc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(auc([1], [0.3]))
    assert math.isnan(auc([], []))
    assert math.isnan(gauc([1, 0], [0.1, 0.2], [1, 2]))  # each user has one class only
    assert math.isnan(gauc([], [], []))
    assert math.isnan(logloss([], []))


def test_all_tied_scores_give_half() -> None:
    assert auc([0, 1, 1, 0, 1], [0.3] * 5) == 0.5


def test_nan_scores_are_rejected() -> None:
    with pytest.raises(ValueError, match="NaN"):
        auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="NaN"):
        SlidingWindowMetrics(4).update([1], [float("nan")], [0])


def test_bad_labels_and_lengths_are_rejected() -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="scores"):
        auc([0, 1], [0.1])


def test_logloss_is_clipped_and_correct() -> None:
    assert logloss([1, 0], [1.0, 0.0]) < 1e-6
    assert math.isfinite(logloss([1, 0], [0.0, 1.0]))
    np.testing.assert_allclose(logloss([1, 0], [0.8, 0.4]), -(math.log(0.8) + math.log(0.6)) / 2)


def test_sliding_window_keeps_the_newest_predictions() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = rng.random(500)
    g = rng.integers(0, 20, 500)
    m = SlidingWindowMetrics(window=128)
    for lo in range(0, 500, 37):  # batches that straddle the ring boundary
        m.update(y[lo : lo + 37], s[lo : lo + 37], g[lo : lo + 37])
    assert len(m) == 128 and m.seen == 500
    np.testing.assert_allclose(m.auc, auc(y[-128:], s[-128:]))
    np.testing.assert_allclose(m.gauc, gauc(y[-128:], s[-128:], g[-128:]))
    np.testing.assert_allclose(m.logloss, logloss(y[-128:], s[-128:]))


def test_sliding_window_batch_larger_than_window() -> None:
    m = SlidingWindowMetrics(window=3)
    m.update([0, 1, 0, 1, 1], [0.9, 0.1, 0.2, 0.8, 0.7], [0] * 5)
    assert len(m) == 3
    assert m.auc == 1.0  # window holds (0, 0.2), (1, 0.8), (1, 0.7)


def test_empty_window_metrics_are_nan() -> None:
    m = SlidingWindowMetrics(window=3)
    assert math.isnan(m.auc) and math.isnan(m.gauc) and math.isnan(m.logloss)
