"""Batches in flight (streaming.pipeline) over RocksDB stores and an in-memory sink whose
acknowledgements the test releases: a batch's changelog waits for its samples' acknowledgement,
its stores and offsets for its changelog's; the next batch reads the states the last one left;
a rebalance and the timer make every batch in flight durable before they go on."""

from __future__ import annotations

import asyncio

import pytest

from contracts.settings import Settings
from feature_store import UserState
from serving.scorer import ItemCatalog
from streaming.changelog import MARKER_KEY, encode_marker
from streaming.ingest import IngestService
from streaming.metrics import IngestMetrics
from streaming.partitions import OwnedPartitions
from tests.support.events import raw_click as raw
from tests.support.sink import MemorySink

SETTINGS = Settings()
TOPICS = SETTINGS.topics
WAIT_S = 0.2  # long enough for a step that could go on to have gone on


def service_over(
    sink: MemorySink, partitions: OwnedPartitions, metrics: IngestMetrics
) -> IngestService:
    return IngestService(SETTINGS, sink, partitions, ItemCatalog(), metrics)


def markers(sink: MemorySink) -> list[bytes | None]:
    return [r.value for r in sink.records[TOPICS.state_changelog] if r.key == MARKER_KEY]


async def still_waiting(task: asyncio.Task[None]) -> bool:
    await asyncio.sleep(WAIT_S)
    return not task.done()


async def test_offsets_are_released_only_once_the_batch_is_durable(
    partitions: OwnedPartitions, metrics: IngestMetrics
) -> None:
    sink, durable = MemorySink(), []
    sink.hold(TOPICS.samples, TOPICS.state_changelog)
    service = service_over(sink, partitions, metrics)
    await partitions.own([0])
    store = partitions.workers[0].store
    await service.push([raw(0, 0, 0.0), raw(0, 1, 5.0)], lambda: durable.append("a"))
    second = asyncio.create_task(service.push([raw(0, 2, 10.0)], lambda: durable.append("b")))
    assert await still_waiting(second)  # sealing the first: its samples not yet acknowledged
    assert not markers(sink) and store.last_offset(0) is None and not durable
    sink.release(TOPICS.samples)
    await asyncio.wait_for(second, 5)  # the first's changelog sent, not acknowledged
    assert markers(sink) == [encode_marker(1)]
    assert store.last_offset(0) is None and not durable
    drain = asyncio.create_task(service.drain())
    assert await still_waiting(drain)
    assert store.last_offset(0) is None and not durable
    sink.release(TOPICS.state_changelog)  # the first is durable; the second's changelog is sent
    await asyncio.sleep(WAIT_S)
    assert store.last_offset(0) == 1 and durable == ["a"]
    assert markers(sink) == [encode_marker(1), encode_marker(2)]
    sink.release(TOPICS.state_changelog)
    await asyncio.wait_for(drain, 5)
    assert store.last_offset(0) == 2 and durable == ["a", "b"]


async def test_a_batch_reads_the_states_the_uncommitted_one_before_it_left(
    partitions: OwnedPartitions, metrics: IngestMetrics
) -> None:
    """Three pushes of one user's events, then the same events one durable batch at a time:
    the same samples, the same stored state, the same changelog records."""
    batches = [[raw(0, i, 10.0 * i)] for i in range(3)] + [[raw(0, 3, 30.0), raw(0, 4, 31.0)]]
    overlapped, one_by_one = MemorySink(), MemorySink()
    service = service_over(overlapped, partitions, metrics)
    await partitions.own([0])
    for batch in batches:
        await service.push(batch)
    assert partitions.workers[0].store.last_offset(0) == 1  # the last two are in flight
    await service.drain()
    pushed = stored(partitions)
    await partitions.own([])  # its stores dropped: the same events again, one batch at a time
    service = service_over(one_by_one, partitions, metrics)
    await partitions.own([0])
    for batch in batches:
        await service.handle(batch)
    assert stored(partitions) == pushed and pushed[1] == 4
    for topic in (TOPICS.samples, TOPICS.state_changelog):
        assert overlapped.sent[topic] == one_by_one.sent[topic]


def stored(partitions: OwnedPartitions) -> tuple[bytes, int | None]:
    store = partitions.workers[0].store
    state = store.get("u1")
    assert isinstance(state, UserState)
    return state.encode(), store.last_offset(0)


@pytest.mark.parametrize("how", ["revoke", "tick"])
async def test_a_revoke_or_the_timer_makes_the_batches_in_flight_durable_first(
    partitions: OwnedPartitions, metrics: IngestMetrics, how: str
) -> None:
    sink, durable = MemorySink(), []
    service = service_over(sink, partitions, metrics)
    await partitions.own([0])
    store = partitions.workers[0].store
    for i in range(3):
        await service.push([raw(0, i, 10.0 * i)], lambda i=i: durable.append(i))
    assert durable == [0] and store.last_offset(0) == 0  # one sealed, one staged
    if how == "revoke":
        await partitions.pause([0])  # what the rebalance hook runs first
    else:
        await service.tick()
    assert durable == [0, 1, 2] and store.last_offset(0) == 2 and not service.in_flight
    assert markers(sink)[-1] == encode_marker(2)
