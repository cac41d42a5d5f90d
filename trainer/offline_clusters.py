"""TWIN-V2 cluster sequences of the offline protocol, clustered as the worker clusters them.

For a sample whose target is behaviour ``p`` of its user (``p`` behaviours before it), the cluster
sequence is :func:`feature_store.clustering.sequence_as_of` over the user's whole history: the
worker's hierarchical k-means (leaves of at most γ = 20, representative nearest the centroid, size
N) of the behaviours up to the last multiple of ``recluster_every``, then the newer ones as
clusters of one. The same function and :class:`~feature_store.cluster_config.ClusterConfig` as the
online feature store, so for the same log and embeddings both hold the same clusters.

Embeddings: the tables of the model being trained (:class:`ItemTable`, item rows as keys),
clustered on each behaviour's token ``[item row, category row]`` (``ClusterConfig.by_token``, the
default, as the worker does with its snapshot's tables) or on the item rows alone.
Before the model has learnt anything (the first ``warmup_epochs``) the clustering falls back to
categories, as a worker does before its first snapshot; from then on the table is refreshed at the
start of each epoch (``trainer.offline.fit``), so the clusters of an epoch come from the weights the
previous epochs learnt, as online they come from the last snapshot. Clustering with the random
initial table would group items by noise.

>>> import numpy as np
>>> from feature_store.cluster_config import ClusterConfig
>>> user_log = np.zeros(10, behaviour_dtype(0)); user_log["item"] = np.arange(1, 11)
>>> user_log["category"] = [1, 1, 1, 2, 2, 2, 1, 1, 2, 2]
>>> oc = OfflineClusters(ClusterConfig(max_leaf=4, recluster_every=8, lifelong_cap=100))
>>> oc.sequence(0, user_log, 10)[["item", "size"]].tolist()  # by category, then 2 singletons
[(3, 3), (6, 3), (8, 2), (9, 1), (10, 1)]
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from feature_store.cluster_config import ClusterConfig
from feature_store.clustering import (
    ClusterState,
    ItemEmbedder,
    clustered_upto,
    members_as_of,
    update,
    with_singletons,
)
from feature_store.state_format import behaviour_dtype

Int = npt.NDArray[np.int64]


class ItemTable:
    """An :class:`ItemEmbedder` over a frozen copy of an item table (keys = rows); with a
    category table also a :class:`~feature_store.clustering.TokenEmbedder` (token rows
    ``[item row, category row]``, as the worker's snapshot embedder gives them)."""

    def __init__(
        self,
        table: npt.NDArray[np.float32],
        version: int,
        categories: npt.NDArray[np.float32] | None = None,
    ) -> None:
        if version < 1:
            raise ValueError("an embedding version is >= 1 (0 means by category)")
        # copies: the offline path hands in views of the live parameters, which the optimiser
        # updates in place; a view would re-cluster with the weights of the moment (a sample's
        # clusters cached mid-epoch, its members measured after training) instead of one snapshot
        self.table, self.version = np.array(table, dtype=np.float32, order="C"), version
        self.categories = None if categories is None else np.array(categories, np.float32)

    def __call__(self, items: Int) -> npt.NDArray[np.float32]:
        return self.table[items]

    def tokens(self, items: Int, categories: Int) -> npt.NDArray[np.float32]:
        if self.categories is None:
            raise ValueError("token rows need the category table")
        return np.concatenate([self.table[items], self.categories[categories]], axis=1)


@dataclass
class OfflineClusters:
    """Cluster sequences per (user, position), cached per embedder version."""

    config: ClusterConfig = field(default_factory=ClusterConfig)
    embedder: ItemEmbedder | None = None  # None: by category
    _cache: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def version(self) -> int:
        return 0 if self.embedder is None else int(self.embedder.version)

    def use(self, embedder: ItemEmbedder | None, by_token: bool | None = None) -> None:
        """Cluster with ``embedder`` from now on (``None``: by category); ``by_token``, when
        given, sets ``ClusterConfig.by_token`` (token rows rather than item rows)."""
        new = 0 if embedder is None else int(embedder.version)
        if new != self.version or embedder is not self.embedder:
            self._cache.clear()
        if by_token is not None and by_token != self.config.by_token:
            self.config = replace(self.config, by_token=by_token)
            self._cache.clear()
        self.embedder = embedder

    def sequence(self, user: int, user_log: np.ndarray, p: int) -> np.ndarray:
        """The cluster sequence before behaviour ``p`` of ``user`` (``user_log``: all of the
        user's behaviours, structured, oldest first)."""
        upto = clustered_upto(p, self.config)
        clustered = self._cache.get((user, upto))
        if clustered is None:
            state = update(ClusterState(), user_log[:upto], 0, self.config, self.embedder)
            clustered = self._cache[(user, upto)] = state.clusters
        return with_singletons(clustered, user_log[upto:p])

    def members(self, user_log: np.ndarray, p: int) -> list[Int]:
        """The user positions each cluster of :meth:`sequence` stands for (not cached)."""
        return members_as_of(user_log, p, self.config, self.embedder)


def user_logs(
    item: Int, category: Int, ts: npt.NDArray[np.float64], start: Int
) -> list[np.ndarray]:
    """Each user's behaviours as the structured rows the feature store clusters."""
    log = np.zeros(item.shape[0], dtype=behaviour_dtype(0))
    log["item"], log["category"], log["ts"] = item, category, ts
    return [log[start[u] : start[u + 1]] for u in range(start.shape[0] - 1)]


@dataclass(frozen=True)
class ClusterArrays:
    """Right-aligned cluster sequences of a batch (newest last, padding on the left)."""

    item: Int  # (B, C) representative item row
    category: Int  # (B, C)
    size: npt.NDArray[np.float32]  # (B, C) N
    mask: npt.NDArray[np.bool_]  # (B, C)


def right_aligned(sequences: list[np.ndarray], max_clusters: int) -> ClusterArrays:
    """The newest ``max_clusters`` clusters of each sequence, right-aligned."""
    width = max(1, min(max_clusters, max((s.shape[0] for s in sequences), default=0)))
    b = len(sequences)
    out = ClusterArrays(
        np.zeros((b, width), np.int64),
        np.zeros((b, width), np.int64),
        np.zeros((b, width), np.float32),
        np.zeros((b, width), bool),
    )
    for row, seq in enumerate(sequences):
        seq = seq[-width:]
        n = seq.shape[0]
        if n:
            out.item[row, width - n :] = seq["item"]
            out.category[row, width - n :] = seq["category"]
            out.size[row, width - n :] = seq["size"]
            out.mask[row, width - n :] = True
    return out
