"""TWIN-V2 hierarchical clustering of a user's lifelong log, bounded and incremental.

This module keeps the block layout and updates it as the log grows;
:mod:`feature_store.cluster_leaves` turns one block into leaves and cluster records (by embedding,
or by category before any model snapshot exists), and :mod:`feature_store.cluster_config` holds
the knobs and the worst-case count that picks the base block size ``B``.

**Blocks (the bounded, coarse-when-old rule).** The log is cut by absolute position into blocks
that are clustered independently: a *level-t block* spans ``B * 2**t`` consecutive behaviours
(``B`` = ``ClusterConfig.block``) and is clustered with leaf cap ``gamma * 2**t``. Complete base
blocks (level 0) enter as the log grows; whenever a level holds three blocks, its two oldest merge
into one block of the next level (a redundant binary counter, as in LSM trees), and the newest
``< B`` behaviours form a level-0 *tail*. Hence every level below the oldest keeps at least one
block, and the precise guarantee is:

    a behaviour with recency rank r (0 = the newest clustered behaviour) is in a leaf of at most
    ``gamma * 2**t`` members, where ``t = floor(log2(1 + r / B))``.

So the newest ``B`` behaviours always have leaves <= gamma and the cap may double with age. At most
two blocks per level plus the tail exist, and with at most ``lifelong_cap`` behaviours in the log
the levels are bounded, so ``B`` is chosen (``__post_init__``) as the largest base whose worst case
stays within ``max_clusters``. That worst case is a 100,000-behaviour user's; a shorter log does not
need its coarse caps, so :func:`leaf_caps` gives each block γ and coarsens only as far as the
user's own layout needs to stay within ``max_clusters`` (oldest blocks first, half an octave at a
time, never past the level's cap): up to 7,424 behaviours every leaf is <= γ at the
defaults. The worst case of the clamped splits is exact
(:func:`~feature_store.cluster_config.leaf_bound`: one leaf per 9.3 members at γ = 20, not per 6),
so B is 429 at the defaults.

When the log is capped, the oldest block loses its oldest members; it is rebuilt over what is left
(a *remnant*, same level) once more than ``remnant_slack`` (25%) of the behaviours it was built
from have left the log, or once it holds more clusters than its cap now allows. So every behaviour
of the log is in exactly one cluster, and the oldest block's clusters may also still count up to
that share of behaviours that the cap already dropped (their sizes sum to ``end - built_from``,
``built_from <= lo``).

**Incremental.** A block is clustered once and then kept; re-clustering (:func:`needs_update`) runs
when the log grew by ``recluster_every`` behaviours, when the embedding version changes (all blocks
rebuilt, within a CPU budget per event: :func:`recluster`, the worker's policy), or when a late
insertion touched a clustered block. The tail is cut in chunks at absolute multiples of
``recluster_every`` and a complete base block keeps the clusters of the chunks it grew from
(:func:`_pieces`: clusters of the newest ``B`` to ``2B`` behaviours span at most one chunk), so a
behaviour is clustered once on arrival; a merge re-clusters ``B * 2**(t+1)`` behaviours whole, so
each behaviour is re-clustered O(log(n / B)) times (2.4 times per behaviour at 5,000 behaviours,
4.0 at 10,000 where caps also change: ``/tmp/sim_rebuild.py``). Until the next run, the newest
(fewer than ``recluster_every``) behaviours enter the cluster sequence as clusters of one
(:func:`with_singletons`), so the sequence always covers the whole log: re-clustering only makes it
coarser, and a user with a short log costs no clustering at all on the ingest path.

>>> from feature_store.state_format import behaviour_dtype
>>> cfg = ClusterConfig(max_leaf=4, max_clusters=32, lifelong_cap=1_000, recluster_every=8)
>>> log = np.zeros(10, behaviour_dtype(0)); log["item"] = np.arange(10); log["category"] = 1
>>> cs = update(ClusterState(), log, 0, cfg)  # no embedder: by category, leaves of <= 4
>>> cs.upto, cs.blocks[["start", "end", "level"]].tolist(), cs.clusters["size"].tolist()
(10, [(0, 4, 0), (4, 8, 0), (8, 10, 0)], [4, 4, 2])

**Online and offline alike.** A worker that applies an in-order log one behaviour at a time with
one embedder re-clusters at every multiple of ``recluster_every``, so before behaviour ``p`` it
holds :func:`sequence_as_of` ``(log, p)``: the offline path (``trainer/dataset.py``) calls that
function, the worker :func:`recluster` (:func:`update`), and both produce the same clusters
(``tests/trainer/test_offline_clusters.py``).

>>> sequence_as_of(log, 10, cfg)["size"].tolist()  # clustered up to 8, then 2 singletons
[4, 4, 1, 1]

**Raw recent behaviours** (``ClusterConfig.raw_recent``, 0 by default; a departure from the
paper, which clusters the whole life cycle): the newest ``raw_recent`` behaviours are never
clustered, so a log no longer than that is attended behaviour by behaviour, as TWIN would, and
only what is older is compressed. Re-clustering then runs when the part older than them grew by
``recluster_every``, up to ``total - raw_recent``; the cluster bound counts them as singletons.

>>> raw = ClusterConfig(max_leaf=4, max_clusters=40, lifelong_cap=1_000, recluster_every=8,
...                     raw_recent=4)
>>> sequence_as_of(log, 10, raw)["size"].tolist()  # 6 older behaviours: none clustered yet
[1, 1, 1, 1, 1, 1, 1, 1, 1, 1]

**Logs that fit the budget stay raw** (``ClusterConfig.raw_until``, 0 by default; also a
departure from the paper): a log of at most ``raw_until`` behaviours (at most ``max_clusters``) is
not clustered at all, so a user whose whole history fits the attention budget is attended
behaviour by behaviour, as TWIN would, and clustering (as above) starts once the log grows past it.

>>> fits = ClusterConfig(max_leaf=4, max_clusters=32, lifelong_cap=1_000, recluster_every=8,
...                      raw_until=9)
>>> [sequence_as_of(log, n, fits)["size"].tolist() for n in (9, 10)]
[[1, 1, 1, 1, 1, 1, 1, 1, 1], [4, 4, 1, 1]]
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from feature_store.cluster_config import ClusterConfig, caps_by_shape, chunk_size, leaf_bound
from feature_store.cluster_leaves import (
    category_embedding,
    category_leaves,
    cluster_dtype,
    in_sequence_order,
    split_leaves,
    summarize,
)
from feature_store.state_format import dense_width

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

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


class TokenEmbedder(ItemEmbedder, Protocol):
    """Also the rows of the token the model attends with: ``[item row, category row]`` of each
    behaviour (clustered on when ``ClusterConfig.by_token``)."""

    def tokens(self, items: I64, categories: I64) -> F32: ...  # (n,), (n,) raw keys -> (n, d)


class LiveEmbedder(ItemEmbedder, Protocol):
    """Embeddings that change (a serving model): :func:`update` reads :meth:`current` once per
    run, so one run never mixes two tables; ``current()`` is None before any snapshot."""

    def current(self) -> ItemEmbedder | None: ...


def pinned(embedder: ItemEmbedder | None) -> ItemEmbedder | None:
    """The embeddings one re-clustering uses: a :class:`LiveEmbedder` read once; None (by
    category) when there is none or its version is 0 (no snapshot yet)."""
    current = getattr(embedder, "current", None)
    if callable(current):
        embedder = current()
    if embedder is None or int(embedder.version) <= 0:
        return None
    return embedder


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
    if total - lo <= config.raw_until:  # short enough to attend raw: nothing clustered
        return state.blocks.shape[0] > 0
    return clusterable_end(lo, total, config) - state.upto >= config.recluster_every


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
    if dense_width(rows):
        out["dense"] = rows["dense"]
    return out


def clusterable_end(lo: int, total: int, config: ClusterConfig) -> int:
    """One past the newest absolute position that may be clustered in a log spanning
    ``[lo, total)``: none (``lo``) while the log holds at most ``raw_until`` behaviours, else all
    but the newest ``raw_recent``."""
    if total - lo <= config.raw_until:
        return lo
    return max(lo, total - config.raw_recent)


def clustered_upto(total: int, config: ClusterConfig, lo: int = 0) -> int:
    """How far a worker that applied the in-order behaviours ``[lo, total)`` (one embedder
    version) has clustered: the last multiple of ``recluster_every`` at or below
    :func:`clusterable_end` (:func:`needs_update`'s rule), not below ``lo``."""
    older = clusterable_end(lo, total, config)
    return max(lo, older - older % config.recluster_every)


def older_part(log: np.ndarray, config: ClusterConfig, lo: int = 0) -> np.ndarray:
    """The rows of ``log`` (absolute positions ``lo ..``) a re-clustering clusters: those before
    :func:`clustered_upto`, so the worker cuts where the offline path does even when it runs late
    (a log growing past ``raw_until``, a late insertion, a stale rebuild)."""
    return log[: clustered_upto(lo + log.shape[0], config, lo) - lo]


def sequence_as_of(
    log: np.ndarray, total: int, config: ClusterConfig, embedder: ItemEmbedder | None = None
) -> np.ndarray:
    """The cluster sequence a worker holds after the first ``total`` behaviours of the in-order
    ``log`` (positions from 0, below the lifelong cap): :func:`update` of the clustered part,
    then the newer behaviours as clusters of one."""
    upto = clustered_upto(total, config)
    clustered = update(ClusterState(), log[:upto], 0, config, embedder).clusters
    return with_singletons(clustered, log[upto:total])


class RebuildBudget:
    """CPU time for re-clustering users whose clusters predate the embeddings: a token bucket in
    seconds. Each applied event earns ``per_event_s`` (up to ``burst_s``); a rebuild runs only
    while the balance is positive and spends what it took, so rebuilds cost at most
    ``per_event_s`` per ingested event on average (plus one rebuild of debt)."""

    def __init__(self, per_event_s: float = 3e-6, burst_s: float = 0.05) -> None:
        self.per_event_s, self.burst_s, self.balance = per_event_s, burst_s, 0.0
        self.rebuilds, self.deferred = 0, 0

    def earn(self) -> None:
        self.balance = min(self.burst_s, self.balance + self.per_event_s)


def recluster(
    state: ClusterState, log: np.ndarray, lo: int, config: ClusterConfig, embedder: Any
) -> ClusterState | None:
    """The worker's policy, run once per applied event; the new state, or None (nothing to do).

    Growth (``recluster_every`` behaviours), a late insertion or the cap re-cluster what changed
    (:func:`needs_update`). When the embeddings changed since the user was clustered (stale), the
    whole log is rebuilt with them if ``embedder.budget`` (a :class:`RebuildBudget`; none: always)
    allows; otherwise the user stays stale (its version unchanged) and growth clusters only the new
    blocks, with the new embeddings, until a later touch finds budget."""
    budget = getattr(embedder, "budget", None)
    if budget is not None:
        budget.earn()
    version = 0 if embedder is None else max(int(embedder.version), 0)
    total = lo + log.shape[0]
    stale = state.version != version and state.blocks.shape[0] > 0
    if stale and (budget is None or budget.balance > 0):
        start = time.perf_counter()
        rebuilt = update(state, older_part(log, config, lo), lo, config, embedder)
        if budget is not None:
            budget.balance -= time.perf_counter() - start
            budget.rebuilds += 1
        return rebuilt
    if not needs_update(state, lo, total, state.version if stale else version, config):
        return None  # the common case, once per event: nothing sliced or built
    if stale and budget is not None:
        budget.deferred += 1
    return update(state, older_part(log, config, lo), lo, config, embedder, keep_version=stale)


def update(
    state: ClusterState,
    log: np.ndarray,
    lo: int,
    config: ClusterConfig,
    embedder: ItemEmbedder | None = None,
    keep_version: bool = False,
) -> ClusterState:
    """Re-cluster ``log`` (structured, absolute positions ``lo ..``) reusing unchanged blocks.
    ``keep_version``: reuse blocks built with other embeddings and keep the state's version (a
    stale user that grew; see :func:`recluster`)."""
    embedder = pinned(embedder)
    version = 0 if embedder is None else int(embedder.version)
    if keep_version:
        version = state.version
    total = lo + log.shape[0]
    layout = advance_layout(state.blocks, lo, total, config)
    caps = leaf_caps(layout, config)
    kept = _reusable(state, version, config)
    _keep_remnant(layout, caps, kept, lo, config)
    groups = []
    empty = np.zeros(0, dtype=cluster_dtype(dense_width(log)))
    for block, cap in zip(layout, caps, strict=True):
        group = kept.get((*_block_key(block), cap))
        if group is None:
            parts = [kept.get((*_block_key(p), cap)) for p in _pieces(block, config)]
            group = np.concatenate([empty] + [
                _build(p, cap, log, lo, config, embedder) if part is None else part
                for p, part in zip(_pieces(block, config), parts, strict=True)
            ])  # fmt: skip
        block["n_clusters"] = group.shape[0]
        groups.append(group)
    return ClusterState(version, total, None, layout, np.concatenate([empty, *groups]))


def advance_layout(blocks: np.ndarray, lo: int, total: int, config: ClusterConfig) -> np.ndarray:
    """The block layout for a log spanning absolute positions [lo, total), grown from ``blocks``.

    New complete base blocks are pushed one by one (merging as the redundant binary counter says),
    blocks wholly below ``lo`` are dropped, and the rest up to ``total`` becomes the tail, cut at
    absolute multiples of ``recluster_every``: a worker re-clustering at those multiples clusters
    each tail chunk once, not the whole growing tail each time."""
    base = config.base
    spans = [_block_key(b)[:3] for b in blocks if _complete(b, base) and b["end"] <= total]
    start = spans[-1][1] if spans else lo
    while start + base <= total:
        _push(spans, (start, start + base, 0))
        start += base
    step = config.recluster_every
    while start < total:  # the tail, in chunks ending at multiples of recluster_every
        end = min(total, (start // step + 1) * step)
        spans.append((start, end, 0))
        start = end
    out = np.zeros(len(spans), dtype=BLOCK_DTYPE)
    for i, (s, e, level) in enumerate(spans):
        out[i] = (s, e, level, max(s, lo), 0)
    return out[out["end"] > lo]


def leaf_caps(layout: np.ndarray, config: ClusterConfig) -> list[int]:
    """Each block's leaf cap: γ everywhere, then, while the worst case (the blocks'
    :func:`~feature_store.cluster_config.leaf_bound` plus ``recluster_every - 1`` singletons)
    exceeds ``max_clusters``, the oldest of the finest blocks takes the next cap of the half-octave
    grid ``round(γ * 2**(k / 2))``, never past its level's cap ``γ * 2**level`` (those fit the
    budget by the choice of ``B``). Older blocks are never finer; a coarse grid keeps caps, and so
    clusters, from changing often as a log grows."""
    shape = tuple((int(b["level"]), _nominal(b, config)) for b in layout)
    return list(caps_by_shape(shape, config))


def _nominal(block: np.void, config: ClusterConfig) -> int:
    """The size the bound counts for a block: its span when complete, else a tail chunk's most."""
    level = int(block["level"])
    return (
        config.base << level if _complete(block, config.base) else chunk_size(config.base, config)
    )


def _pieces(block: np.void, config: ClusterConfig) -> list[np.void]:
    """The spans a block is clustered in: a complete base block in the tail chunks it grew from
    (cut at absolute multiples of ``recluster_every``, so the worker reuses their clusters and a
    base block costs no clustering of its own), any other block whole."""
    if int(block["level"]) or not _complete(block, config.base):
        return [block]
    start, end, step = int(block["built_from"]), int(block["end"]), config.recluster_every
    cuts = [start, *range((start // step + 1) * step, end, step), end]
    pieces = np.zeros(len(cuts) - 1, dtype=BLOCK_DTYPE)
    for i, (s, e) in enumerate(pairwise(cuts)):
        pieces[i] = (s, e, 0, s, 0)
    return list(pieces)


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


Kept = dict[tuple[int, int, int, int, int], np.ndarray]  # (*_block_key, leaf cap) -> clusters


def _reusable(state: ClusterState, version: int, config: ClusterConfig) -> Kept:
    """Cluster groups of the old blocks that a rebuild would reproduce exactly."""
    if state.version != version:
        return {}
    offsets = np.concatenate([[0], np.cumsum(state.blocks["n_clusters"], dtype=np.int64)])
    caps = leaf_caps(state.blocks, config)
    kept = {}
    for i, b in enumerate(state.blocks):
        if state.dirty_from is not None and b["end"] > state.dirty_from:
            continue
        kept[(*_block_key(b), caps[i])] = state.clusters[offsets[i] : offsets[i + 1]]
    return kept


def _keep_remnant(
    layout: np.ndarray, caps: list[int], kept: Kept, lo: int, config: ClusterConfig
) -> None:
    """Let the oldest block keep its clusters while at most ``remnant_slack`` of the behaviours
    they were built from have left the log (so a capped user does not re-cluster it each time),
    and while they are no more clusters than the cap :func:`leaf_caps` gives it now allows (so the
    budget holds): sets its ``built_from`` and lookup cap to the kept ones."""
    if not layout.shape[0] or layout["start"][0] >= lo:
        return
    first = layout[0]
    allowed = leaf_bound(_nominal(first, config), caps[0], config)
    for (start, end, level, built_from, cap), clusters in kept.items():
        same = (start, end, level) == _block_key(first)[:3] and clusters.shape[0] <= allowed
        if (
            same
            and built_from <= lo
            and lo - built_from <= config.remnant_slack * (end - built_from)
        ):
            first["built_from"], caps[0] = built_from, cap
            return


def _block_key(b: np.void) -> tuple[int, int, int, int]:
    return int(b["start"]), int(b["end"]), int(b["level"]), int(b["built_from"])


def _build(
    block: np.void,
    cap: int,
    log: np.ndarray,
    lo: int,
    config: ClusterConfig,
    embedder: ItemEmbedder | None,
) -> np.ndarray:
    """Cluster the behaviours of one block into leaves of at most ``cap``."""
    part = log[int(block["built_from"]) - lo : int(block["end"]) - lo]
    leaves, x = _leaves(block, cap, part, config, embedder)
    return summarize(leaves, x, part)  # x None: one category per leaf, no centroid needed


def _leaves(
    block: np.void,
    cap: int,
    part: np.ndarray,
    config: ClusterConfig,
    embedder: ItemEmbedder | None,
) -> tuple[list[I64], F32 | None]:
    """The leaves of one block's behaviours ``part`` and the vectors they were split by."""
    if embedder is None:  # the block's share of layout_bound caps its category leaves
        allowance = leaf_bound(_nominal(block, config), cap, config)
        leaves = category_leaves(part["category"], cap, allowance)
        if leaves is not None:
            return leaves, None
    x = _embed(part, embedder, config.by_token)
    return split_leaves(x, cap, config), x


def members_as_of(
    log: np.ndarray, total: int, config: ClusterConfig, embedder: ItemEmbedder | None = None
) -> list[I64]:
    """The positions in ``log`` of each cluster's members, in the order of
    :func:`sequence_as_of` (for measuring what a cluster stands for, e.g. retrieval quality)."""
    upto, embedder = clustered_upto(total, config), pinned(embedder)
    out: list[I64] = []
    layout = advance_layout(np.zeros(0, BLOCK_DTYPE), 0, upto, config)
    for block, cap in zip(layout, leaf_caps(layout, config), strict=True):
        for piece in _pieces(block, config):
            first = int(piece["built_from"])
            leaves, _ = _leaves(piece, cap, log[first : int(piece["end"])], config, embedder)
            out += [first + leaf for leaf in in_sequence_order(leaves)]
    return out + [np.array([p], dtype=np.int64) for p in range(upto, total)]


def _embed(part: np.ndarray, embedder: ItemEmbedder | None, by_token: bool) -> F32:
    """The rows a block is split by: with ``by_token`` the embedder's ``[item, category]`` token
    rows (:class:`TokenEmbedder`: the worker's snapshot embeddings, the offline model's tables),
    else, or for an embedder of item rows alone (no ``tokens``), its item rows; by category
    without an embedder."""
    if embedder is None:
        return category_embedding(part["category"])
    items = np.ascontiguousarray(part["item"])
    tokens = getattr(embedder, "tokens", None) if by_token else None
    if tokens is not None:
        x = np.asarray(tokens(items, np.ascontiguousarray(part["category"])), dtype=np.float32)
    else:
        x = np.asarray(embedder(items), dtype=np.float32)
    if x.ndim != 2 or x.shape[0] != part.shape[0]:
        raise ValueError(f"embedder returned shape {x.shape} for {part.shape[0]} items")
    return x
