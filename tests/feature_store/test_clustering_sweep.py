"""The background sweep rebuilds stale users' clusters within its budget, and the changelog
carries the rebuilt clusters (a restore gets what the store has)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from contracts.schema import Event, EventType
from feature_store import FeatureConfig, MemoryStore, PartitionWorker, UserState
from feature_store.cluster_config import ClusterConfig
from feature_store.clustering import ClusterState, older_part, update
from feature_store.clustering_sweep import SweepConfig, sweep_stale
from feature_store.state_delta import (
    CHECKPOINT,
    Records,
    apply_record,
    decode_checkpoint,
    record_user,
)


class SwitchableTable:
    """Item embeddings whose version (and table) the test switches, as a new snapshot would."""

    def __init__(self) -> None:
        self.version, self.seed = 1, 1

    def __call__(self, items: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        table = np.random.default_rng(self.seed).standard_normal((97, 8)).astype(np.float32)
        return table[items % 97]


def clicks(user: str, n: int, first_offset: int) -> list[tuple[int, Event]]:
    return [
        (first_offset + i, Event(user, str(i % 41), EventType.CLICK, 1e9 + 60.0 * i, str(i % 5),
                                 event_id=f"{user}-{i}"))
        for i in range(n)
    ]  # fmt: skip


def replay(records: Records) -> dict[str, UserState]:
    """States rebuilt from changelog records, as a restore does."""
    states: dict[str, UserState] = {}
    for key, value in records:
        if value is None:
            continue
        user = record_user(key)
        if value[:1] == CHECKPOINT:
            states[user] = decode_checkpoint(value)
        else:
            assert apply_record(states.get(user), key, value)
    return states


def test_sweep_rebuilds_the_stalest_users_within_its_budget_and_logs_them() -> None:
    table = SwitchableTable()
    worker = PartitionWorker(MemoryStore(), 0, FeatureConfig(), embedder=table)
    changelog: Records = []
    users = ["a", "b", "c"]
    for k, user in enumerate(users):
        result = worker.process(clicks(user, 700, 1_000 * k))
        worker.commit(result)
        changelog += result.changelog
    table.version, table.seed = 2, 2  # new embeddings; nobody touched since

    assert sweep_stale(worker, SweepConfig(seconds=0.0)).states == {}  # no budget, no rebuild
    swept = sweep_stale(worker, SweepConfig(seconds=10.0, max_users=2))
    assert sorted(swept.states) == ["a", "b"]  # the first two of the stalest (all at version 1)
    worker.commit(swept)
    changelog += swept.changelog
    rest = sweep_stale(worker, SweepConfig(seconds=10.0))
    assert sorted(rest.states) == ["c"]
    worker.commit(rest)
    changelog += rest.changelog
    assert sweep_stale(worker, SweepConfig(seconds=10.0)).states == {}  # all fresh now

    restored = replay(changelog)
    for user, stored in zip(users, worker.store.get_many(users), strict=True):
        assert stored is not None and stored.cluster_state.version == 2
        config = worker.config.clusters
        log = older_part(stored.log, config, stored.lo)  # cut where the worker re-clusters
        fresh = update(ClusterState(), log, stored.lo, config, table)
        assert stored.cluster_state.clusters.tobytes() == fresh.clusters.tobytes()
        assert restored[user].cluster_state.clusters.tobytes() == fresh.clusters.tobytes()


def test_sweep_leaves_the_raw_recent_behaviours_clusters_of_one() -> None:
    table = SwitchableTable()
    config = FeatureConfig(clusters=ClusterConfig(raw_recent=150))
    worker = PartitionWorker(MemoryStore(), 0, config, embedder=table)
    worker.commit(worker.process(clicks("a", 700, 0)))
    table.version, table.seed = 2, 2
    worker.commit(sweep_stale(worker, SweepConfig(seconds=10.0)))
    (stored,) = worker.store.get_many(["a"])
    assert stored is not None and stored.cluster_state.version == 2
    assert stored.cluster_state.upto == 512  # the newest 150 stay unclustered (cut at 4 x 128)
    assert (stored.clusters()["size"][-150:] == 1).all()
