"""OwnedPartitions: one RocksDB store per owned partition, restored before use, deleted when
lost; paused partitions are not applied until the next assignment."""

from __future__ import annotations

from streaming.metrics import IngestMetrics
from streaming.partitions import OwnedPartitions
from tests.support.events import event


async def test_own_restores_each_new_partition_then_opens_its_store(
    partitions: OwnedPartitions, restored: list[int], metrics: IngestMetrics
) -> None:
    await partitions.own([2, 0])
    assert restored == [0, 2]
    assert sorted(partitions.workers) == [0, 2]
    assert partitions.path(2) == partitions.state_dir / "events" / "p2.rocksdb"
    assert partitions.path(0).is_dir() and partitions.path(2).is_dir()
    assert metrics.registry.get_sample_value("twinstream_ingest_assigned_partitions") == 2
    await partitions.own([0, 2])  # kept partitions are not restored again
    assert restored == [0, 2]


async def test_a_lost_partition_is_closed_and_its_state_deleted(
    partitions: OwnedPartitions, metrics: IngestMetrics
) -> None:
    await partitions.own([0, 1])
    kept = partitions.workers[1]
    result = kept.process([(0, event(0.0))])
    kept.commit(result)
    await partitions.own([1])
    assert sorted(partitions.workers) == [1] and partitions.workers[1] is kept
    assert not partitions.path(0).exists()
    assert partitions.state(1, "u1") is not None
    assert metrics.registry.get_sample_value("twinstream_ingest_assigned_partitions") == 1


async def test_paused_partitions_wait_for_the_next_assignment(
    partitions: OwnedPartitions,
) -> None:
    await partitions.own([0, 1])
    await partitions.pause([1, 5])
    assert partitions.applying(0) and not partitions.applying(1) and not partitions.applying(5)
    assert sorted(partitions.active()) == [0]
    await partitions.own([1])
    assert partitions.applying(1) and sorted(partitions.active()) == [1]
    assert partitions.paused == {5}  # never ours: stays out until assigned


async def test_state_is_read_only_from_owned_partitions(partitions: OwnedPartitions) -> None:
    await partitions.own([0])
    worker = partitions.workers[0]
    worker.commit(worker.process([(0, event(0.0, user="u7"))]))
    state = partitions.state(0, "u7")
    assert state is not None and len(state.log) == 1
    assert partitions.state(0, "nobody") is None
    assert partitions.state(1, "u7") is None and partitions.state(None, "u7") is None


async def test_close_closes_every_store(partitions: OwnedPartitions) -> None:
    await partitions.own([0, 1])
    await partitions.close()
    assert partitions.workers == {}
    assert partitions.path(0).is_dir()  # closed, not deleted: the next start restores less
