"""Cluster leaves: clamped 2-means partitions within the cap and the bound, category leaves."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from feature_store.cluster_config import ClusterConfig, leaf_bound
from feature_store.cluster_leaves import category_leaves, split_leaves

SMALL = ClusterConfig(max_leaf=3, max_clusters=60, lifelong_cap=400, recluster_every=8)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 120),
    dim=st.integers(1, 4),
    cap=st.integers(1, 12),
    duplicates=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_split_leaves_partition_and_sizes(
    n: int, dim: int, cap: int, duplicates: bool, seed: int
) -> None:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    if duplicates:
        x[:] = x[:1] if n else x  # all identical: k-means cannot separate them
    leaves = split_leaves(x, cap, SMALL)
    members = np.sort(np.concatenate(leaves)) if leaves else np.zeros(0, int)
    assert np.array_equal(members, np.arange(n))
    assert all(leaf.shape[0] <= cap for leaf in leaves)
    if n > cap:
        assert min(leaf.shape[0] for leaf in leaves) >= SMALL.min_leaf(cap)
    assert len(leaves) <= leaf_bound(n, cap, SMALL)


def test_split_finds_separated_groups_and_representatives() -> None:
    cfg = ClusterConfig(max_leaf=5)
    centres = np.eye(4, dtype=np.float32) * 10
    x = np.repeat(centres, 5, axis=0) + np.random.default_rng(0).normal(0, 0.01, (20, 4))
    leaves = split_leaves(x.astype(np.float32), 5, cfg)
    assert sorted(tuple(sorted(leaf // 5)) for leaf in leaves) == [(g,) * 5 for g in range(4)]


def test_category_leaves_fall_back_when_over_allowance() -> None:
    cats = np.arange(10, dtype=np.int64)  # ten categories of one member
    assert category_leaves(cats, cap=4, allowance=3) is None
    leaves = category_leaves(np.array([1, 1, 1, 1, 1, 2]), cap=2, allowance=10)
    assert leaves is not None and sorted(len(x) for x in leaves) == [1, 1, 2, 2]  # 2+2+1, 1


def test_leaf_bound_is_the_exact_worst_case_of_clamped_splits() -> None:
    """Every split size choice the clamp allows, enumerated: the bound is attained, never beaten,
    non-decreasing, and tighter than one leaf per ``min_leaf`` members."""
    cfg, cap = ClusterConfig(), 5
    worst = {m: 1 for m in range(1, cap + 1)}
    for m in range(cap + 1, 200):
        low = -(-m // 4)  # ceil(0.25 m)
        worst[m] = max(worst[a] + worst[m - a] for a in range(low, m // 2 + 1))
    bounds = [leaf_bound(m, cap, cfg) for m in range(1, 200)]
    assert all(bounds[m - 1] >= worst[m] for m in worst)
    exact = [max(worst[k] for k in range(1, m + 1)) for m in range(1, 21)]  # up to cap / rho
    assert bounds[:20] == exact
    assert bounds == sorted(bounds)
    assert leaf_bound(10_000, 20, cfg) < 10_000 // cfg.min_leaf(20)
