"""How one block of behaviours becomes clusters: leaves, then one summary record per leaf.

**Leaves.** A set of behaviours is split in two with 2-means (farthest-point initialisation, a few
Lloyd iterations, no randomness) until every leaf has at most ``cap`` members. Each split is
*clamped*: both children keep at least ``ceil(rho * m)`` of the ``m`` members (``rho`` =
``min_split_fraction``), so a leaf born from a split never has fewer than ``ceil(rho * (cap + 1))``
members and a set of ``s > cap`` behaviours gives at most ``s // ceil(rho * (cap + 1))`` leaves.
Each leaf becomes a cluster (:func:`summarize`, records of :func:`cluster_dtype`): size N, dense
features = mean of the members, item and category = the member nearest the centroid (ties: the most
recent member).

Before any model snapshot exists (no embedder) a block is clustered by category: one leaf per
category (:func:`category_leaves`, cut into near-equal runs in time order when over the cap),
represented by its most recent item. When a block has too many small categories for the budget, it
falls back to the clamped 2-means over a fixed pseudo-random unit vector per category
(:func:`category_embedding`, so leaves may then mix categories).

>>> cfg = ClusterConfig(max_leaf=4, max_clusters=32, lifelong_cap=1_000, recluster_every=8)
>>> x = np.repeat(np.eye(3, dtype=np.float32), 5, axis=0)  # 3 tight groups of 5
>>> leaves = split_leaves(x, cap=5, config=cfg)
>>> sorted(sorted(leaf.tolist()) for leaf in leaves)
[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14]]
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import numpy.typing as npt

from feature_store.cluster_config import ClusterConfig
from feature_store.ids import splitmix64
from feature_store.state_format import dense_width
from feature_store.two_means import nearest_members, split_tree

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
CATEGORY_DIM = 16


def split_leaves(x: F32, cap: int, config: ClusterConfig) -> list[I64]:
    """Row indices of ``x`` (n, d) grouped into leaves of at most ``cap`` rows, by recursive
    clamped 2-means (:func:`feature_store.two_means.split_tree`, compiled). Deterministic."""
    rows = np.ascontiguousarray(x, dtype=np.float32)
    order, sizes = split_tree(rows, cap, config.min_split_fraction, config.lloyd_iters)
    return np.split(order, np.cumsum(sizes)[:-1]) if sizes.shape[0] else []


def category_leaves(categories: I64, cap: int, allowance: int) -> list[I64] | None:
    """One leaf per category (a category over ``cap`` is cut into near-equal runs in time order),
    or ``None`` when that would give more than ``allowance`` leaves."""
    n = categories.shape[0]
    order = np.lexsort((np.arange(n), categories))  # by category, then position
    cuts = np.flatnonzero(np.diff(categories[order])) + 1
    groups = np.split(order, cuts) if n else []
    pieces = sum(-(-g.shape[0] // cap) for g in groups)
    if pieces > allowance:
        return None
    return [run for g in groups for run in _runs(g, cap)]


def _runs(group: I64, cap: int) -> list[I64]:
    """``group`` cut into the fewest near-equal runs of at most ``cap``."""
    return [group] if group.shape[0] <= cap else np.array_split(group, -(-group.shape[0] // cap))


def category_embedding(categories: I64, dim: int = CATEGORY_DIM) -> F32:
    """A fixed pseudo-random unit vector per category id (splitmix64 bits): (n,) -> (n, dim)."""
    cat = categories.astype(np.uint64)[:, None]
    z = splitmix64((cat * np.uint64(dim) + np.arange(dim, dtype=np.uint64)).astype(np.uint64))
    v = (z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 23) - np.float32(1.0)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), np.float32(1e-12))


# ---------------------------------------------------------------- summaries


@lru_cache(maxsize=16)
def cluster_dtype(n_dense: int) -> np.dtype:
    """One cluster of the sequence: representative item/category, size, mean dense features."""
    return np.dtype(
        [("item", "<i8"), ("category", "<i8"), ("size", "<u4"), ("dense", "<f4", (n_dense,))]
    )


def summarize(leaves: list[I64], x: F32 | None, log: np.ndarray) -> np.ndarray:
    """One cluster record per leaf, ordered by the mean position of the members (oldest first).

    ``log`` is the structured behaviour array the rows of ``x`` belong to (fields item, category,
    dense). The representative is the member nearest the centroid of ``x`` (ties: the most
    recent); with ``x = None`` (all members alike) it is the most recent member."""
    n_dense = dense_width(log)
    out = np.zeros(len(leaves), dtype=cluster_dtype(n_dense))
    if not leaves:
        return out
    order = np.concatenate(leaves)  # members grouped by leaf
    sizes = np.array([leaf.shape[0] for leaf in leaves], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    if x is None:
        nearest = np.maximum.reduceat(order, starts)
    else:
        nearest = nearest_members(np.ascontiguousarray(x, dtype=np.float32), order, sizes)
    out["item"], out["category"] = log["item"][nearest], log["category"][nearest]
    out["size"] = sizes
    if n_dense:
        out["dense"] = np.add.reduceat(log["dense"][order], starts, axis=0) / sizes[:, None]
    return out[_sequence_order(order, starts, sizes)]


def in_sequence_order(leaves: list[I64]) -> list[I64]:
    """``leaves`` in the order :func:`summarize` gives their clusters."""
    if not leaves:
        return []
    order = np.concatenate(leaves)
    sizes = np.array([leaf.shape[0] for leaf in leaves], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return [leaves[i] for i in _sequence_order(order, starts, sizes)]


def _sequence_order(order: I64, starts: I64, sizes: I64) -> I64:
    """Leaves by the mean position of their members, oldest first (ties: as given)."""
    mean_pos = np.add.reduceat(order.astype(np.float64), starts) / sizes
    return np.argsort(mean_pos, kind="stable")
