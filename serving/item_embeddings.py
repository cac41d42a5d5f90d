"""The serving snapshot's item embeddings as the worker's TWIN-V2 clustering input.

:class:`SnapshotItemEmbeddings` is an :class:`feature_store.clustering.ItemEmbedder` over one
loaded snapshot: item keys (``stable_id`` of the raw ids, as the state's log holds them) → rows of
its feature mapper → rows of its model's item table (an item the snapshot has not admitted reads
the shared unknown row 0). Its ``version`` is the snapshot's. Its ``tokens`` gives each
behaviour's ``[item row, category row]``, the token the model attends with, which the worker
clusters on (``ClusterConfig.by_token``, the default, as the offline evaluation does).

:class:`LiveItemEmbeddings` follows the scorer's :class:`serving.scorer.ModelHolder` for the
ingest path. Before any snapshot it has version 0, and the feature store clusters by category.
Its version is the serving snapshot's version when it last *adopted* one: at once the first time,
then at most once every ``min_interval_s``. A user whose clusters carry an older version (kept in
each user's cluster state) re-clusters wholly when next touched, while its :class:`RebuildBudget`
(CPU seconds earned per ingested event) has a positive balance; otherwise it stays stale and only
its growth is clustered, until a later touch (:func:`feature_store.clustering.recluster`). So the
interval bounds how often one user pays a full re-clustering, and the budget what all of them cost
per event, whatever the trainer's snapshot rate. Clusters are always computed with the table of
the snapshot serving at that moment (no old snapshot is kept alive for clustering: a Taobao-sized
item table is 1 GB); between adoptions a user whose log grows re-clusters only its new blocks,
with the newer table. Each re-clustering reads the serving snapshot once
(:meth:`LiveItemEmbeddings.current`), so a swap in its middle never mixes two tables in one run.

:class:`ClusterMetrics`: leaf sizes and staleness (adopted version minus the user's) of the users a
batch touched, sampled as the worker's other per-state histograms are, and what the background
sweep (:mod:`feature_store.clustering_sweep`, run on the ingest timer) rebuilt and spent.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from feature_store.clustering import RebuildBudget
from feature_store.state import UserState
from serving.scorer import ModelHolder, ServingModel

STATES_OBSERVED_PER_BATCH = 8
LEAF_SIZE_BUCKETS = (1, 2, 3, 5, 8, 10, 12, 15, 20, 30, 40, 80, 160)
STALENESS_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 1_000)


class SnapshotItemEmbeddings:
    """Item embeddings of one loaded snapshot (an ``ItemEmbedder``), under ``version``. With
    ``holder`` a call reads the holder's serving model under its lock (a delta swaps in a twin or
    changes the model in place while holding it): one consistent table and id map."""

    def __init__(
        self,
        snapshot: ServingModel,
        version: int | None = None,
        holder: ModelHolder | None = None,
    ) -> None:
        self.version = int(snapshot.version if version is None else version)
        self._snapshot, self._holder = snapshot, holder
        self._lock = threading.Lock() if holder is None else holder.lock

    @torch.inference_mode()
    def __call__(self, items: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        with self._lock:
            snapshot = self._serving()
            return _rows(snapshot.model.item.weight, snapshot.mapper.items.lookup(items))

    @torch.inference_mode()
    def tokens(
        self, items: npt.NDArray[np.int64], categories: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        """``[item row, category row]`` of each behaviour, the token the model attends with
        (a category the snapshot has not admitted reads the unknown row 0, as an item does)."""
        with self._lock:
            snapshot = self._serving()
            item = _rows(snapshot.model.item.weight, snapshot.mapper.items.lookup(items))
            rows = snapshot.mapper.categories.lookup(categories)
            return np.concatenate([item, _rows(snapshot.model.category.weight, rows)], axis=1)

    def _serving(self) -> ServingModel:
        """The snapshot to read (the caller holds the lock)."""
        snapshot = self._snapshot if self._holder is None else self._holder.model
        return snapshot or self._snapshot


def _rows(weight: torch.Tensor, rows: torch.Tensor) -> npt.NDArray[np.float32]:
    """Rows of a (n_rows, dim) table on the snapshot's device, as float32 numpy (n, dim)."""
    return weight[rows.to(weight.device)].float().cpu().numpy()


class LiveItemEmbeddings:
    """The holder's item embeddings, versions adopted at most every ``min_interval_s``."""

    def __init__(
        self,
        holder: ModelHolder,
        min_interval_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        rebuild_budget: RebuildBudget | None = None,
    ) -> None:
        self.holder, self.min_interval_s, self.clock = holder, min_interval_s, clock
        self.budget = rebuild_budget or RebuildBudget()  # read by feature_store's recluster
        self._version = 0
        self._embeddings: SnapshotItemEmbeddings | None = None  # of the last current()
        self._of: ServingModel | None = None  # ... and the snapshot it reads
        self._adopted_at = -np.inf
        self._lock = threading.Lock()

    @property
    def version(self) -> int:
        """The version users are clustered under now (0: no snapshot yet, by category)."""
        self._adopt(self.holder.model)
        return self._version

    def current(self) -> SnapshotItemEmbeddings | None:
        """The serving snapshot's embeddings under the adopted version (None: no snapshot)."""
        serving = self.holder.model
        if serving is None:
            return None
        self._adopt(serving)
        cached = self._embeddings
        if cached is None or self._of is not serving or cached.version != self._version:
            cached = SnapshotItemEmbeddings(serving, self._version, self.holder)
            self._embeddings, self._of = cached, serving
        return cached

    def _adopt(self, serving: ServingModel | None) -> None:
        if serving is None or serving.version <= self._version:
            return
        now = self.clock()
        with self._lock:
            if self._version == 0 or now - self._adopted_at >= self.min_interval_s:
                self._version, self._adopted_at = max(self._version, serving.version), now

    def __call__(self, items: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        return self._current_or_raise()(items)

    def tokens(
        self, items: npt.NDArray[np.int64], categories: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        return self._current_or_raise().tokens(items, categories)

    def _current_or_raise(self) -> SnapshotItemEmbeddings:
        embeddings = self.current()
        if embeddings is None:
            raise RuntimeError("no snapshot yet: the feature store clusters by category")
        return embeddings


class ClusterMetrics:
    """Leaf sizes and staleness of the touched users' clusters (a sample per batch)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.mean_leaf = Histogram(
            "twinstream_cluster_mean_leaf_size",
            "Mean members per TWIN-V2 cluster (clustered part) of a touched user",
            buckets=LEAF_SIZE_BUCKETS,
            registry=registry,
        )
        self.staleness = Histogram(
            "twinstream_cluster_staleness_versions",
            "Snapshot versions between the adopted item embeddings and a touched user's clusters",
            buckets=STALENESS_BUCKETS,
            registry=registry,
        )
        self.version = Gauge(
            "twinstream_cluster_embedding_version",
            "Snapshot whose item embeddings the worker clusters with (0: by category)",
            registry=registry,
        )
        self.sweep_rebuilds = Counter(
            "twinstream_cluster_sweep_rebuilds",
            "Stale users whose clusters the background sweep rebuilt",
            registry=registry,
        )
        self.sweep_seconds = Counter(
            "twinstream_cluster_sweep_seconds",
            "Time the background sweep spent rebuilding stale users' clusters",
            registry=registry,
        )

    def observe_sweep(self, rebuilt: int, seconds: float) -> None:
        """One background sweep (:mod:`feature_store.clustering_sweep`): users rebuilt, CPU."""
        self.sweep_rebuilds.inc(rebuilt)
        self.sweep_seconds.inc(seconds)

    def observe(self, states: Iterable[UserState], live: Any) -> None:
        """``live``: the worker's embedder (a :class:`LiveItemEmbeddings`) or None."""
        version = 0 if live is None else int(live.version)
        self.version.set(version)
        for state in itertools.islice(states, STATES_OBSERVED_PER_BATCH):
            cs = state.cluster_state
            if not cs.clusters.shape[0]:
                continue
            self.mean_leaf.observe(float(cs.clusters["size"].mean()))
            self.staleness.observe(max(0, version - max(cs.version, 0)))
