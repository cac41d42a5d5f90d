"""The knobs of TWIN-V2 clustering (:class:`ClusterConfig`) and the worst case that picks ``B``.

Splitting ``s > cap`` behaviours into leaves of at most ``cap`` is *clamped*: no leaf is smaller
than ``ceil(rho * (cap + 1))`` (``rho`` = ``min_split_fraction``), so there are at most
:func:`leaf_bound` leaves. The block layout of :mod:`feature_store.clustering` keeps at most two
blocks per level up to :func:`max_level` (a level-``t`` block spans ``B * 2**t`` behaviours with
leaf cap ``gamma * 2**t``), a tail of fewer than ``B`` behaviours (in chunks), and fewer than
``recluster_every`` behaviours not clustered yet, so :func:`cluster_bound` bounds the cluster
sequence of one user. When ``block`` is left ``None``, :class:`ClusterConfig` takes the largest
base ``B`` whose bound stays within ``max_clusters``.

>>> cfg = ClusterConfig(max_leaf=4, max_clusters=32, lifelong_cap=1_000, recluster_every=8)
>>> cfg.base, max_level(cfg.base, cfg), cluster_bound(cfg.base, cfg) <= cfg.max_clusters
(4, 7, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class ClusterConfig:
    """TWIN-V2 clustering knobs. ``block`` (B) is derived from the budget when left ``None``."""

    max_leaf: int = 20  # gamma
    max_clusters: int = 1_000  # bound on the cluster sequence of one user
    lifelong_cap: int = 100_000
    recluster_every: int = 128  # delta: behaviours added before re-clustering (bench_clustering)
    lloyd_iters: int = 2  # per 2-means split, after farthest-point initialisation
    min_split_fraction: float = 0.25  # rho
    remnant_slack: float = 0.25  # share of a capped oldest block that may leave before a rebuild
    block: int | None = None  # B
    # The newest raw_recent behaviours are never clustered (clusters of one): a departure from
    # the paper, which clusters the whole life cycle; 0 = as published (see clustering.py)
    raw_recent: int = 0
    # A log of at most raw_until behaviours is not clustered at all: it fits the attention
    # budget, so it is attended behaviour by behaviour (as TWIN would) and clustering starts once
    # it grows past that; a departure from the paper, which clusters every lifelong log; 0 = as
    # published (see clustering.py)
    raw_until: int = 0
    # Cluster on the token the model attends with, [item row, category row] of each behaviour
    # (the embedder's ``tokens``), not the item row alone: worker and offline alike (issue 15;
    # the default since 5 seeds on Taobao and MovieLens favoured it, trainer/RESULTS-offline.md)
    by_token: bool = True

    def __post_init__(self) -> None:
        if (
            self.max_leaf < 1
            or self.recluster_every < 1
            or self.lloyd_iters < 0
            or self.raw_recent < 0
            or not 0 <= self.raw_until < self.lifelong_cap
        ):
            raise ValueError(f"invalid ClusterConfig: {self}")
        if not 0.0 < self.min_split_fraction <= 0.5:
            raise ValueError("min_split_fraction must be in (0, 0.5]")
        if not 0.0 <= self.remnant_slack < 1.0:
            raise ValueError("remnant_slack must be in [0, 1)")
        if self.block is None:
            object.__setattr__(self, "block", _largest_block(self))
        if self.raw_until > self.max_clusters:
            raise ValueError(f"raw_until={self.raw_until} exceeds max_clusters={self.max_clusters}")
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
    """Most leaves :func:`split_leaves` can return for ``size`` behaviours and leaf cap ``cap``
    (non-decreasing in ``size``): the exact worst case of the clamped splits (:func:`_worst_leaves`)
    for caps up to ``EXACT_CAP_LIMIT``, else ``size // min_leaf``."""
    if size <= cap:
        return min(size, 1)
    if cap > EXACT_CAP_LIMIT:
        return size // config.min_leaf(cap)
    table, (leaves, per) = _worst_leaves(cap, config.min_split_fraction)
    if size < table.shape[0]:
        return int(table[size])
    return size * leaves // per


EXACT_CAP_LIMIT = 1_280  # caps above: the simple bound (its table: ~0.1 s at 1,280, grows as cap²)


@lru_cache(maxsize=64)
def _worst_leaves(cap: int, rho: float) -> tuple[npt.NDArray[np.int64], tuple[int, int]]:
    """The most leaves a clamped split tree can have, exactly for sizes up to ``n0 = cap / rho``
    (running maximum, so non-decreasing), and the densest ratio ``leaves / size`` seen there.

    A split of ``m`` members gives sides ``a, m - a`` with ``a >= ceil(rho * m)``, so
    ``W(m) = max_a W(a) + W(m - a)``, ``W = 1`` up to ``cap``. Past ``n0`` both sides of every
    split exceed ``cap``, so by induction ``W(m) <= m * leaves // per``. For γ = 20 and ρ = 0.25
    that is 3 leaves per 28 members, where ``m // min_leaf`` counts one per 6.

    >>> table, ratio = _worst_leaves(20, 0.25)
    >>> int(table[21]), int(table[30]), ratio
    (2, 3, (3, 28))
    """
    n0 = math.ceil(cap / rho)
    worst = np.ones(n0 + 1, dtype=np.int64)
    worst[0] = 0
    best = (1, cap + 1)
    for m in range(cap + 1, n0 + 1):
        sides = np.arange(math.ceil(rho * m), m // 2 + 1)
        worst[m] = int((worst[sides] + worst[m - sides]).max())
        if worst[m] * best[1] > best[0] * m:
            best = (int(worst[m]), m)
    return np.maximum.accumulate(worst), best


def max_level(base: int, config: ClusterConfig) -> int:
    """The highest block level a log of ``lifelong_cap`` behaviours can reach."""
    return math.floor(math.log2(config.lifelong_cap / base + 1))


def cluster_bound(base: int, config: ClusterConfig) -> int:
    """Worst-case cluster count: two blocks per level up to :func:`max_level`, the tail's chunks,
    and the singletons of the behaviours not clustered yet (:func:`unclustered_bound`)."""
    levels = range(max_level(base, config) + 1)
    full = sum(block_bound(t, base << t, config.leaf_cap(t), base, config) for t in levels)
    return 2 * full + tail_bound(base, config) + unclustered_bound(config)


def unclustered_bound(config: ClusterConfig) -> int:
    """Most behaviours not clustered yet (clusters of one): ``raw_recent`` plus fewer than
    ``recluster_every`` since the last re-clustering."""
    return config.raw_recent + config.recluster_every - 1


def block_bound(level: int, nominal: int, cap: int, base: int, config: ClusterConfig) -> int:
    """Most clusters of one block of ``nominal`` behaviours at leaf cap ``cap``. A complete base
    block is clustered in its tail chunks (cut at multiples of ``recluster_every``: at most
    ``ceil(B / recluster_every) + 1`` of them), any other block whole."""
    if level == 0 and nominal == base:
        chunks = -(-base // config.recluster_every) + 1
        return chunks * leaf_bound(min(config.recluster_every, base), cap, config)
    return leaf_bound(nominal, cap, config)


def chunk_size(base: int, config: ClusterConfig) -> int:
    """The most behaviours one tail chunk holds: the tail (< B behaviours) is cut at absolute
    multiples of ``recluster_every``, so each chunk is clustered once as the log grows."""
    return max(1, min(config.recluster_every, base - 1))


def tail_bound(base: int, config: ClusterConfig) -> int:
    """Most clusters the tail's chunks hold: ``B - 1`` positions cut at multiples of
    ``recluster_every`` (one more chunk where the tail does not start on one)."""
    chunks = -(-(base - 1) // config.recluster_every) + 1
    return chunks * leaf_bound(chunk_size(base, config), config.max_leaf, config)


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


@lru_cache(maxsize=4_096)
def caps_by_shape(shape: tuple[tuple[int, int], ...], config: ClusterConfig) -> tuple[int, ...]:
    """Leaf caps of blocks given as (level, nominal size), oldest first: the rule of
    :func:`feature_store.clustering.leaf_caps` (cached: a few hundred layouts recur across
    users), run on the blocks of the two highest levels as they are and on the worst case below
    them (two blocks per lower level, the tail's chunks): each lower level takes the coarser of
    its two caps. The blocks of low levels come and go every few hundred behaviours; caps that
    followed them changed often and re-clustered old blocks each time (``/tmp/i15/sim2.py``:
    5.2 extra passes per behaviour at 20,000 behaviours, 18.3 at 50,000; 1.1 and 1.5 this way)."""
    if not shape:
        return ()
    top = max(level for level, _ in shape)
    kept = [i for i, (level, _) in enumerate(shape) if level >= max(top - 1, 1)]
    lower = [(t, config.base << t) for t in range(top - 2, 0, -1) for _ in range(2)]
    chunks = [(0, chunk_size(config.base, config))] * (
        -(-(config.base - 1) // config.recluster_every) + 1
    )
    worst = tuple([shape[i] for i in kept] + lower + [(0, config.base)] * 2 + chunks)
    caps = _greedy_caps(worst, config)
    by_level: dict[int, int] = {}
    for (level, _), cap in zip(worst[len(kept) :], caps[len(kept) :], strict=True):
        by_level[level] = max(by_level.get(level, 0), cap)
    position = {i: k for k, i in enumerate(kept)}
    return tuple(
        caps[position[i]] if i in position else by_level.get(level, config.max_leaf)
        for i, (level, _) in enumerate(shape)
    )


def _greedy_caps(shape: tuple[tuple[int, int], ...], config: ClusterConfig) -> tuple[int, ...]:
    """γ everywhere, then the oldest of the finest blocks one half-octave coarser until the worst
    case fits ``max_clusters`` (never past a level's cap)."""
    steps = [0] * len(shape)  # half-octaves above γ
    base = config.base
    bounds = [block_bound(lv, nominal, config.max_leaf, base, config) for lv, nominal in shape]
    excess = sum(bounds) + unclustered_bound(config) - config.max_clusters
    while excess > 0:
        below = [i for i, (level, _) in enumerate(shape) if steps[i] < 2 * level]
        if not below:
            break
        finest = min(steps[i] for i in below)
        i = next(i for i in below if steps[i] == finest)
        steps[i] += 1
        new = block_bound(*shape[i], _grid_cap(steps[i], config), base, config)
        excess, bounds[i] = excess + new - bounds[i], new
    return tuple(_grid_cap(step, config) for step in steps)


def _grid_cap(step: int, config: ClusterConfig) -> int:
    """γ·2^(step/2), exact at even steps (the level caps)."""
    if step % 2 == 0:
        return config.leaf_cap(step // 2)
    return round(config.max_leaf * 2 ** (step / 2))
