"""TWIN-V2 hierarchical clustering of a user's lifelong log, bounded and incremental.

**Leaves.** A set of behaviours is split in two with 2-means (farthest-point initialisation, a few
Lloyd iterations, no randomness) until every leaf has at most ``cap`` members. Each split is
*clamped*: both children keep at least ``ceil(rho * m)`` of the ``m`` members (``rho`` =
``min_split_fraction``), so a leaf born from a split never has fewer than ``ceil(rho * (cap + 1))``
members and a set of ``s > cap`` behaviours gives at most ``s // ceil(rho * (cap + 1))`` leaves.
Each leaf becomes a cluster: size N, dense features = mean of the members, item and category = the
member nearest the centroid (ties: the most recent member).

**Blocks (the bounded, coarse-when-old rule).** The log is cut by absolute position into blocks
that are clustered independently: a *level-t block* spans ``B * 2**t`` consecutive behaviours
(``B`` = ``ClusterConfig.block``) and is clustered with leaf cap ``gamma * 2**t``. Complete base
blocks (level 0) enter as the log grows; whenever a level holds three blocks, its two oldest merge
into one block of the next level (a redundant binary counter, as in LSM trees), and the newest
``< B`` behaviours form a level-0 *tail*. Hence every level below the oldest keeps at least one
block, and the precise guarantee is:

    a behaviour with recency rank r (0 = the newest clustered behaviour) is in a leaf of at most
    ``gamma * 2**t`` members, where ``t = floor(log2(1 + r / B))``.

So the newest ``B`` behaviours always have leaves <= gamma and the cap doubles with age. At most two
blocks per level plus the tail exist, and with at most ``lifelong_cap`` behaviours in the log the
levels are bounded, so ``B`` is chosen (``__post_init__``) as the largest base whose worst case
stays within ``max_clusters``. When the log is capped, the oldest block loses its oldest members; it
is rebuilt over what is left (a *remnant*, same level) once more than ``remnant_slack`` (25%) of the
behaviours it was built from have left the log. So every behaviour of the log is in exactly one
cluster, and the oldest block's clusters may also still count up to that share of behaviours that
the cap already dropped (their sizes sum to ``end - built_from``, ``built_from <= lo``).

**Incremental.** A block is clustered once and then kept; re-clustering (:func:`needs_update`) runs
when the log grew by ``recluster_every`` behaviours, when the embedding version changes (all blocks
rebuilt), or when a late insertion touched a clustered block. A merge re-clusters ``B * 2**(t+1)``
behaviours, so each behaviour is re-clustered O(log(n / B)) times. Until the next run, the newest
(fewer than ``recluster_every``) behaviours enter the cluster sequence as clusters of one
(:func:`with_singletons`), so the sequence always covers the whole log: re-clustering only makes it
coarser, and a user with a short log costs no clustering at all on the ingest path.

Before any model snapshot exists (no embedder) a block is clustered by category: one leaf per
category (cut into near-equal runs in time order when over the cap), represented by its most recent
item. When a block has too many small categories for the budget, it falls back to the clamped
2-means over a fixed pseudo-random unit vector per category (so leaves may then mix categories).

>>> cfg = ClusterConfig(max_leaf=4, max_clusters=64, lifelong_cap=1_000, recluster_every=8)
>>> x = np.repeat(np.eye(3, dtype=np.float32), 5, axis=0)  # 3 tight groups of 5
>>> leaves = split_leaves(x, cap=5, config=cfg)
>>> sorted(sorted(leaf.tolist()) for leaf in leaves)
[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14]]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

import numpy as np
import numpy.typing as npt

from feature_store.ids import splitmix64

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
CATEGORY_DIM = 16

BLOCK_DTYPE = np.dtype(
    [
        ("start", "<i8"),  # absolute position of the block's first slot
        ("end", "<i8"),  # one past its last slot (tail: the clustered end)
        ("level", "u1"),  # leaf cap = max_leaf << level
        ("built_from", "<i8"),  # positions actually clustered: [built_from, end)
        ("n_clusters", "<u4"),
    ]
)


class ItemEmbedder(Protocol):
    """Item embeddings of a model snapshot. ``version`` > 0 identifies the snapshot."""

    @property
    def version(self) -> int: ...

    def __call__(self, items: I64) -> F32: ...  # (n,) raw item keys -> (n, d)


@dataclass(frozen=True)
class ClusterConfig:
    """TWIN-V2 clustering knobs. ``block`` (B) is derived from the budget when left ``None``."""

    max_leaf: int = 20  # gamma
    max_clusters: int = 1_000  # bound on the cluster sequence of one user
    lifelong_cap: int = 100_000
    recluster_every: int = 64  # delta: behaviours added before re-clustering
    lloyd_iters: int = 4
    min_split_fraction: float = 0.25  # rho
    remnant_slack: float = 0.25  # share of a capped oldest block that may leave before a rebuild
    block: int | None = None  # B

    def __post_init__(self) -> None:
        if self.max_leaf < 1 or self.recluster_every < 1 or self.lloyd_iters < 0:
            raise ValueError(f"invalid ClusterConfig: {self}")
        if not 0.0 < self.min_split_fraction <= 0.5:
            raise ValueError("min_split_fraction must be in (0, 0.5]")
        if not 0.0 <= self.remnant_slack < 1.0:
            raise ValueError("remnant_slack must be in [0, 1)")
        if self.block is None:
            object.__setattr__(self, "block", _largest_block(self))
        if cluster_bound(self.base, self) > self.max_clusters:
            raise ValueError(f"block={self.block} can exceed max_clusters={self.max_clusters}")

    @property
    def base(self) -> int:
        """B, the size of a level-0 block."""
        assert self.block is not None
        return self.block

    def leaf_cap(self, level: int) -> int:
        return self.max_leaf << level

    def min_leaf(self, cap: int) -> int:
        """The smallest leaf a split of a node larger than ``cap`` can produce."""
        return math.ceil(self.min_split_fraction * (cap + 1))


def leaf_bound(size: int, cap: int, config: ClusterConfig) -> int:
    """Most leaves :func:`split_leaves` can return for ``size`` behaviours and leaf cap ``cap``."""
    if size <= cap:
        return min(size, 1)
    return size // config.min_leaf(cap)


def max_level(base: int, config: ClusterConfig) -> int:
    """The highest block level a log of ``lifelong_cap`` behaviours can reach."""
    return math.floor(math.log2(config.lifelong_cap / base + 1))


def cluster_bound(base: int, config: ClusterConfig) -> int:
    """Worst-case cluster count: two blocks per level up to :func:`max_level`, the tail, and the
    singletons of the behaviours not clustered yet."""
    levels = range(max_level(base, config) + 1)
    full = sum(leaf_bound(base << t, config.leaf_cap(t), config) for t in levels)
    return 2 * full + leaf_bound(base - 1, config.max_leaf, config) + config.recluster_every - 1


def _largest_block(config: ClusterConfig) -> int:
    """The largest B whose worst case fits the budget. For a fixed :func:`max_level` the bound
    grows with B, so binary-search each level's interval of B and keep the best."""
    cap, best = config.lifelong_cap, 0
    for level in range(max_level(1, config) + 1):
        low = cap // ((1 << (level + 1)) - 1) + 1  # max_level(B) == level on [low, high]
        high = cap if level == 0 else cap // ((1 << level) - 1)
        while low <= high:
            mid = (low + high) // 2
            if cluster_bound(mid, config) <= config.max_clusters:
                best, low = max(best, mid), mid + 1
            else:
                high = mid - 1
    if best == 0:
        raise ValueError(f"max_clusters={config.max_clusters} is too small for {config}")
    return best


# ---------------------------------------------------------------- leaves


def split_leaves(x: F32, cap: int, config: ClusterConfig) -> list[I64]:
    """Row indices of ``x`` (n, d) grouped into leaves of at most ``cap`` rows, by recursive
    clamped 2-means. Deterministic."""
    leaves: list[I64] = []
    stack: list[I64] = [np.arange(x.shape[0], dtype=np.int64)]
    while stack:
        idx = stack.pop()
        if idx.shape[0] <= cap:
            if idx.shape[0]:
                leaves.append(idx)
            continue
        left, right = _split(x[idx], config)
        stack += [idx[right], idx[left]]
    return leaves


def _split(x: F32, config: ClusterConfig) -> tuple[I64, I64]:
    """Two-way clamped k-means split of the rows of ``x`` (m, d): positions of each side."""
    m = x.shape[0]
    c0, c1 = _two_means(x, config.lloyd_iters)
    direction = c1 - c0  # (d,)
    proj = x @ direction  # (m,)
    threshold = 0.5 * float(c1 @ c1 - c0 @ c0)
    low = math.ceil(config.min_split_fraction * m)
    k = min(max(int((proj > threshold).sum()), low), m - low)
    order = np.argsort(proj, kind="stable")
    return order[: m - k], order[m - k :]


def _two_means(x: F32, iters: int) -> tuple[F32, F32]:
    """Centroids of 2-means with farthest-point initialisation."""
    first = x[int(np.argmax(((x - x.mean(axis=0)) ** 2).sum(axis=1)))]
    c0, c1 = first, x[int(np.argmax(((x - first) ** 2).sum(axis=1)))]
    for _ in range(iters):
        side = x @ (c1 - c0) > 0.5 * float(c1 @ c1 - c0 @ c0)
        if side.all() or not side.any():
            break
        c0, c1 = x[~side].mean(axis=0), x[side].mean(axis=0)
    return c0, c1


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
    n_dense = _n_dense(log)
    out = np.zeros(len(leaves), dtype=cluster_dtype(n_dense))
    if not leaves:
        return out
    order = np.concatenate(leaves)  # members grouped by leaf
    sizes = np.array([leaf.shape[0] for leaf in leaves], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    if x is None:
        nearest = np.maximum.reduceat(order, starts)
    else:
        leaf_of = np.repeat(np.arange(len(leaves)), sizes)
        centroid = np.add.reduceat(x[order], starts, axis=0) / sizes[:, None]  # (k, d)
        dist = ((x[order] - centroid[leaf_of]) ** 2).sum(axis=1)
        nearest = order[np.lexsort((-order, dist, leaf_of))[starts]]  # ties -> most recent
    out["item"], out["category"] = log["item"][nearest], log["category"][nearest]
    out["size"] = sizes
    if n_dense:
        out["dense"] = np.add.reduceat(log["dense"][order], starts, axis=0) / sizes[:, None]
    mean_pos = np.add.reduceat(order.astype(np.float64), starts) / sizes
    return out[np.argsort(mean_pos, kind="stable")]


# ---------------------------------------------------------------- blocks


@dataclass(frozen=True)
class ClusterState:
    """The clustered part of one user's log: blocks (oldest first) and their clusters."""

    version: int = -1  # embedder version used (0 = by category, -1 = never clustered)
    upto: int = 0  # clustered absolute positions end here
    dirty_from: int | None = None  # a late insertion shifted positions >= this one
    blocks: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=BLOCK_DTYPE))
    clusters: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=cluster_dtype(0)))

    def mark_dirty(self, position: int) -> ClusterState:
        """Record that a late behaviour was inserted at absolute ``position``."""
        if position >= self.upto:
            return self
        low = position if self.dirty_from is None else min(self.dirty_from, position)
        return ClusterState(self.version, self.upto, low, self.blocks, self.clusters)


def needs_update(
    state: ClusterState, lo: int, total: int, version: int, config: ClusterConfig
) -> bool:
    """Whether :func:`update` would change anything worth the work (see the module docstring).

    ``lo``/``total``: absolute positions of the log's first behaviour and one past its last."""
    if total == lo:
        return state.blocks.shape[0] > 0
    if state.dirty_from is not None:
        return True
    if state.version != version and state.blocks.shape[0] > 0:  # clustered with old embeddings
        return True
    return total - state.upto >= config.recluster_every


def with_singletons(clusters: np.ndarray, unclustered: np.ndarray) -> np.ndarray:
    """The cluster sequence: ``clusters`` then one cluster of size 1 per behaviour of
    ``unclustered`` (the structured log rows newer than the last re-clustering)."""
    if not unclustered.shape[0]:
        return clusters
    return np.concatenate([clusters, singletons(unclustered, clusters.dtype)])


def singletons(rows: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """One cluster record of size 1 (``dtype``: :func:`cluster_dtype`) per behaviour row."""
    out = np.empty(rows.shape[0], dtype=dtype)  # packed: every byte is one of the fields below
    out["item"], out["category"], out["size"] = rows["item"], rows["category"], 1
    if _n_dense(rows):
        out["dense"] = rows["dense"]
    return out


def update(
    state: ClusterState,
    log: np.ndarray,
    lo: int,
    config: ClusterConfig,
    embedder: ItemEmbedder | None = None,
) -> ClusterState:
    """Re-cluster ``log`` (structured, absolute positions ``lo ..``) reusing unchanged blocks."""
    version = 0 if embedder is None else int(embedder.version)
    total = lo + log.shape[0]
    layout = advance_layout(state.blocks, lo, total, config)
    kept = _reusable(state, version)
    _keep_remnant(layout, kept, lo, config)
    groups = []
    for block in layout:
        group = kept.get(_block_key(block))
        if group is None:
            group = _build(block, log, lo, config, embedder)
        block["n_clusters"] = group.shape[0]
        groups.append(group)
    empty = np.zeros(0, dtype=cluster_dtype(_n_dense(log)))
    return ClusterState(version, total, None, layout, np.concatenate([empty, *groups]))


def advance_layout(blocks: np.ndarray, lo: int, total: int, config: ClusterConfig) -> np.ndarray:
    """The block layout for a log spanning absolute positions [lo, total), grown from ``blocks``.

    New complete base blocks are pushed one by one (merging as the redundant binary counter says),
    blocks wholly below ``lo`` are dropped, and the rest up to ``total`` becomes the tail."""
    base = config.base
    spans = [_block_key(b)[:3] for b in blocks if _complete(b, base) and b["end"] <= total]
    start = spans[-1][1] if spans else lo
    while start + base <= total:
        _push(spans, (start, start + base, 0))
        start += base
    if start < total:
        spans.append((start, total, 0))
    out = np.zeros(len(spans), dtype=BLOCK_DTYPE)
    for i, (s, e, level) in enumerate(spans):
        out[i] = (s, e, level, max(s, lo), 0)
    return out[out["end"] > lo]


def _complete(block: np.void, base: int) -> bool:
    return int(block["end"] - block["start"]) == base << int(block["level"])


def _push(spans: list[tuple[int, int, int]], block: tuple[int, int, int]) -> None:
    """Append a level-0 block; while a level holds three blocks, merge its two oldest."""
    spans.append(block)
    level = 0
    while True:
        same = [i for i, s in enumerate(spans) if s[2] == level]
        if len(same) < 3:
            return
        i, j = same[0], same[1]
        spans[i : j + 1] = [(spans[i][0], spans[j][1], level + 1)]
        level += 1


def _reusable(state: ClusterState, version: int) -> dict[tuple[int, int, int, int], np.ndarray]:
    """Cluster groups of the old blocks that a rebuild would reproduce exactly."""
    if state.version != version:
        return {}
    offsets = np.concatenate([[0], np.cumsum(state.blocks["n_clusters"], dtype=np.int64)])
    kept = {}
    for i, b in enumerate(state.blocks):
        if state.dirty_from is not None and b["end"] > state.dirty_from:
            continue
        kept[_block_key(b)] = state.clusters[offsets[i] : offsets[i + 1]]
    return kept


def _keep_remnant(
    layout: np.ndarray,
    kept: dict[tuple[int, int, int, int], np.ndarray],
    lo: int,
    config: ClusterConfig,
) -> None:
    """Let the oldest block keep its clusters while at most ``remnant_slack`` of the behaviours
    they were built from have left the log (so a capped user does not re-cluster it each time)."""
    if not layout.shape[0] or layout["start"][0] >= lo:
        return
    first = layout[0]
    for start, end, level, built_from in kept:
        same = (start, end, level) == _block_key(first)[:3]
        if (
            same
            and built_from <= lo
            and lo - built_from <= config.remnant_slack * (end - built_from)
        ):
            first["built_from"] = built_from
            return


def _block_key(b: np.void) -> tuple[int, int, int, int]:
    return int(b["start"]), int(b["end"]), int(b["level"]), int(b["built_from"])


def _build(
    block: np.void,
    log: np.ndarray,
    lo: int,
    config: ClusterConfig,
    embedder: ItemEmbedder | None,
) -> np.ndarray:
    """Cluster the behaviours of one block."""
    part = log[int(block["built_from"]) - lo : int(block["end"]) - lo]
    level = int(block["level"])
    cap = config.leaf_cap(level)
    if embedder is None:  # the block's share of cluster_bound caps its category leaves
        nominal = config.base << level if _complete(block, config.base) else config.base - 1
        leaves = category_leaves(part["category"], cap, leaf_bound(nominal, cap, config))
        if leaves is not None:
            return summarize(leaves, None, part)  # one category per leaf: no centroid needed
    x = _embed(part, embedder)
    return summarize(split_leaves(x, cap, config), x, part)


def _embed(part: np.ndarray, embedder: ItemEmbedder | None) -> F32:
    if embedder is None:
        return category_embedding(part["category"])
    x = np.asarray(embedder(np.ascontiguousarray(part["item"])), dtype=np.float32)
    if x.ndim != 2 or x.shape[0] != part.shape[0]:
        raise ValueError(f"embedder returned shape {x.shape} for {part.shape[0]} items")
    return x


def _n_dense(log: np.ndarray) -> int:
    shape = log.dtype["dense"].shape
    return int(shape[0]) if shape else 0
