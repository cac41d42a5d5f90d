"""The compiled 2-means tree against its numpy formulation (kept here as the readable spec):
the same leaves wherever rounding cannot decide a split, and leaves as good where it can."""

from __future__ import annotations

import math

import numpy as np
import pytest

from feature_store.cluster_config import ClusterConfig
from feature_store.two_means import nearest_members, split_tree

CFG = ClusterConfig()


def reference_leaves(x: np.ndarray, cap: int, rho: float, iters: int) -> list[np.ndarray]:
    """Depth-first clamped 2-means in numpy (the formulation before the kernel was compiled)."""
    leaves, stack = [], [np.arange(x.shape[0])]
    while stack:
        idx = stack.pop()
        if idx.shape[0] <= cap:
            leaves += [idx] if idx.shape[0] else []
            continue
        side = reference_split(x[idx], rho, iters)
        stack += [idx[side], idx[~side]]
    return leaves


def reference_split(x: np.ndarray, rho: float, iters: int) -> np.ndarray:
    m, half_sq, total = x.shape[0], 0.5 * np.einsum("ij,ij->i", x, x), x.sum(axis=0)
    c0 = x[int(np.argmax(half_sq - x @ (total / m)))]
    c1 = x[int(np.argmax(half_sq - x @ c0))]
    last = None
    for iteration in range(iters + 1):
        axis = c1 - c0
        proj, threshold = x @ axis, 0.5 * float(axis @ (c1 + c0))
        side = proj > threshold
        if iteration == iters or (last is not None and np.array_equal(side, last)):
            break
        n1 = int(side.sum())
        if n1 in (0, m):
            break
        s1 = side @ x
        c0, c1, last = (total - s1) / (m - n1), s1 / n1, side
    n1, low = int(side.sum()), math.ceil(rho * m)
    if not low <= n1 <= m - low:
        k = min(max(n1, low), m - low)
        side[:] = False
        side[np.argsort(proj, kind="stable")[m - k :]] = True
    return side


def leaves_of(x: np.ndarray, cap: int) -> list[np.ndarray]:
    order, sizes = split_tree(x, cap, CFG.min_split_fraction, CFG.lloyd_iters)
    return np.split(order, np.cumsum(sizes)[:-1]) if sizes.shape[0] else []


def within_leaf_sse(x: np.ndarray, leaves: list[np.ndarray]) -> float:
    return sum(float(((x[leaf] - x[leaf].mean(axis=0)) ** 2).sum()) for leaf in leaves)


@pytest.mark.parametrize("n, dim, cap", [(30, 4, 5), (400, 16, 20), (3000, 128, 20), (777, 64, 40)])
def test_the_same_leaves_as_the_numpy_formulation_on_distinct_rows(
    n: int, dim: int, cap: int
) -> None:
    x = np.random.default_rng(n).standard_normal((n, dim)).astype(np.float32)
    ours = leaves_of(x, cap)
    reference = reference_leaves(x, cap, CFG.min_split_fraction, CFG.lloyd_iters)
    assert [leaf.tolist() for leaf in ours] == [leaf.tolist() for leaf in reference]


def test_with_duplicate_rows_ties_may_break_apart_but_leaves_are_as_good() -> None:
    """A history repeats items: identical rows tie exactly, and which of them rounding puts on
    a side is arbitrary; the partition's quality (leaf count, within-leaf SSE) is not."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((40, 128)).astype(np.float32)[rng.integers(0, 40, 2000)]
    ours, reference = leaves_of(x, 20), reference_leaves(x, 20, CFG.min_split_fraction, 2)
    assert len(ours) == len(reference)
    assert within_leaf_sse(x, ours) == pytest.approx(within_leaf_sse(x, reference), rel=1e-3)


def test_nearest_members_is_the_member_nearest_the_centroid_most_recent_on_ties() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 32)).astype(np.float32)
    x[10] = x[11]  # a tie: both at the same distance from their leaf's centroid
    leaves = [np.arange(0, 9), np.array([10, 11]), rng.permutation(np.arange(12, 500))]
    order, sizes = np.concatenate(leaves), np.array([leaf.shape[0] for leaf in leaves])
    expected = [
        int(leaf[np.argmin(((x[leaf] - x[leaf].mean(axis=0)) ** 2).sum(axis=1))]) for leaf in leaves
    ]
    expected[1] = 11
    assert nearest_members(x, order, sizes).tolist() == expected
