"""The worker clusters with the serving snapshot's item embeddings: category fallback before any
snapshot, a real loaded snapshot after, versions adopted at most every interval, metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from contracts.schema import Event, EventType
from feature_store import FeatureConfig, MemoryStore, PartitionWorker
from feature_store.clustering import ClusterState, RebuildBudget, update
from feature_store.ids import stable_ids
from serving.item_embeddings import ClusterMetrics, LiveItemEmbeddings, SnapshotItemEmbeddings
from serving.loading import LoadedSnapshot, load_snapshot
from serving.scorer import ModelHolder
from tests.support.snapshots import write_scoring_snapshot

ITEMS = np.array([str(100 + i) for i in range(60)], dtype=object)
CATS = np.array([str(i % 4) for i in range(60)], dtype=object)


def snapshot(folder: Path, version: int) -> LoadedSnapshot:
    written = write_scoring_snapshot(folder, version, stable_ids(ITEMS), stable_ids(CATS))
    return load_snapshot(written.path)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def clicks(user: str, n: int, start: int = 0) -> list[tuple[int, Event]]:
    rng = np.random.default_rng(start)
    picks = rng.integers(0, len(ITEMS), n)
    return [
        (start + i, Event(user, str(ITEMS[k]), EventType.CLICK, 1.6e9 + 60 * (start + i),
                          str(CATS[k]), event_id=f"{user}-{start + i}"))
        for i, k in enumerate(picks)
    ]  # fmt: skip


def test_snapshot_embeddings_are_the_models_item_rows(tmp_path: Path) -> None:
    snap = snapshot(tmp_path, 3)
    emb = SnapshotItemEmbeddings(snap)
    keys = stable_ids(ITEMS[:5])
    rows = snap.mapper.items.lookup(keys)
    assert emb.version == 3 and rows.min() > 0
    assert np.array_equal(emb(keys), snap.model.item.weight[rows].detach().numpy())
    unknown = emb(np.array([987_654_321], dtype=np.int64))  # not admitted: the unknown row 0
    assert np.array_equal(unknown[0], snap.model.item.weight[0].detach().numpy())


def test_snapshot_tokens_are_the_models_item_and_category_rows(tmp_path: Path) -> None:
    """What the worker clusters on with ``ClusterConfig.by_token``: each behaviour's token."""
    snap = snapshot(tmp_path, 3)
    live = LiveItemEmbeddings(ModelHolder())
    live.holder.swap(snap)
    items, cats = stable_ids(ITEMS[:6]), stable_ids(CATS[:6])
    item_rows, cat_rows = snap.mapper.items.lookup(items), snap.mapper.categories.lookup(cats)
    expected = np.hstack(
        [
            snap.model.item.weight[item_rows].detach().numpy(),
            snap.model.category.weight[cat_rows].detach().numpy(),
        ]
    )
    assert cat_rows.min() > 0 and expected.shape == (6, 2 * snap.model.config.dim)
    assert np.array_equal(SnapshotItemEmbeddings(snap).tokens(items, cats), expected)
    assert np.array_equal(live.tokens(items, cats), expected)


def test_worker_clusters_by_category_then_with_the_live_snapshot(tmp_path: Path) -> None:
    holder, clock = ModelHolder(), Clock()
    budget = RebuildBudget(per_event_s=1.0, burst_s=10.0)  # ample: every stale touch rebuilds
    live = LiveItemEmbeddings(holder, min_interval_s=60.0, clock=clock, rebuild_budget=budget)
    worker = PartitionWorker(MemoryStore(), 0, FeatureConfig(), embedder=live)
    worker.commit(worker.process(clicks("u", 130)))
    (state,) = worker.store.get_many(["u"])
    assert live.version == 0 and state is not None and state.cluster_state.version == 0

    first = snapshot(tmp_path / "a", 5)
    holder.swap(first)
    worker.commit(worker.process(clicks("u", 1, start=130)))  # touched: re-clustered lazily
    (state,) = worker.store.get_many(["u"])
    assert state is not None and state.cluster_state.version == 5
    expected = update(
        ClusterState(), state.log[:128], 0, FeatureConfig().clusters, SnapshotItemEmbeddings(first)
    )
    assert state.cluster_state.upto == 128  # the rebuild cuts where growth would (128 x 1)
    assert state.cluster_state.clusters.tobytes() == expected.clusters.tobytes()
    assert state.cluster_state.clusters["size"].max() <= 20  # gamma

    holder.swap(snapshot(tmp_path / "b", 6))  # newer, within the interval: not adopted yet
    clock.now = 30.0
    worker.commit(worker.process(clicks("u", 1, start=131)))
    (state,) = worker.store.get_many(["u"])
    assert live.version == 5 and state is not None and state.cluster_state.version == 5
    clock.now = 61.0  # the interval has passed: adopted, the next touch re-clusters
    worker.commit(worker.process(clicks("u", 1, start=132)))
    (state,) = worker.store.get_many(["u"])
    assert live.version == 6 and state is not None and state.cluster_state.version == 6


def test_cluster_metrics_leaf_sizes_and_staleness(tmp_path: Path) -> None:
    holder = ModelHolder()
    live = LiveItemEmbeddings(holder, min_interval_s=0.0)
    worker = PartitionWorker(MemoryStore(), 0, FeatureConfig(), embedder=live)
    result = worker.process(clicks("u", 200))  # clustered by category (version 0)
    holder.swap(snapshot(tmp_path, 4))
    registry = CollectorRegistry()
    ClusterMetrics(registry).observe(result.states.values(), live)

    def staleness_at_most(bound: str) -> float | None:
        name = "twinstream_cluster_staleness_versions_bucket"
        return registry.get_sample_value(name, {"le": bound})

    assert [staleness_at_most(b) for b in ("0.0", "2.0", "5.0")] == [0.0, 0.0, 1.0]  # 4 behind
    mean_leaf = registry.get_sample_value("twinstream_cluster_mean_leaf_size_sum")
    state = result.states["u"]
    assert mean_leaf == float(state.cluster_state.clusters["size"].mean()) > 1.0
    assert registry.get_sample_value("twinstream_cluster_embedding_version") == 4.0


def test_without_budget_a_stale_user_keeps_its_version_and_clusters_only_its_growth(
    tmp_path: Path,
) -> None:
    holder = ModelHolder()
    live = LiveItemEmbeddings(holder, rebuild_budget=RebuildBudget(per_event_s=0.0))
    worker = PartitionWorker(MemoryStore(), 0, FeatureConfig(), embedder=live)
    worker.commit(worker.process(clicks("u", 600)))  # by category: full blocks of B, then a tail
    (before,) = worker.store.get_many(["u"])
    assert before is not None and before.cluster_state.version == 0
    holder.swap(snapshot(tmp_path, 2))
    worker.commit(worker.process(clicks("u", 100, start=600)))  # no budget: no rebuild
    (after,) = worker.store.get_many(["u"])
    assert after is not None and after.cluster_state.version == 0  # still stale
    assert after.cluster_state.upto == 640 and live.budget.rebuilds == 0
    assert live.budget.deferred > 0
    old = before.cluster_state
    full = old.blocks["end"] - old.blocks["start"] == FeatureConfig().clusters.base
    assert full.any()
    n_first = int(old.blocks["n_clusters"][full].sum())  # the full blocks were kept as they were
    assert after.cluster_state.clusters[:n_first].tobytes() == old.clusters[:n_first].tobytes()
