"""Fail-stop without a broker: a RocksDB store whose disk fills up after some batches (its writes
then raise as rocksdict's do on ENOSPC) stops the ingest service at the failed batch (nothing of
it committed locally, no later batch or tick applied), as does a changelog the broker does not
acknowledge or a flush that fails; and it stops the ingest agent: unhealthy gauge, the fault
counted by kind, no further batch taken, every offset commit refused, /healthz 503 with the
reason, the app crashed with it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from faust.types import TP

from contracts.settings import Settings
from feature_store.store import RocksDBStore, StoreWriteError
from serving.scorer import ItemCatalog
from streaming.agents.ingest import add_ingest_agent
from streaming.agents.score import requests_topic
from streaming.app import create_app
from streaming.changelog import MARKER_KEY, encode_marker
from streaming.failstop import FailStop, FailStopped, fault_kind
from streaming.ingest import IngestService, RawMessage
from streaming.metrics import IngestMetrics
from streaming.partitions import OwnedPartitions, StoresStopped
from streaming.sink import Acknowledgements, Delivery
from streaming.transport import Consumer
from streaming.views import add_views
from tests.support.events import T0
from tests.support.gauges import NoGauges
from tests.support.sink import MemorySink
from tests.support.stores import ENOSPC, filling_store
from tests.support.waiting import eventually

SETTINGS = Settings()
TOPICS = SETTINGS.topics


@pytest.fixture()
def disk_room(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """``disk_room(n)``: stores opened from now on take ``n`` write batches, then fail."""

    def fill_after(room: int) -> None:
        def open_store(path: Path) -> RocksDBStore:
            return filling_store(path, room)

        monkeypatch.setattr("streaming.partitions.RocksDBStore", open_store)

    return fill_after


def click(partition: int, offset: int, user: str = "u1") -> RawMessage:
    event = {"user_id": user, "item_id": "i1", "category_id": "c1", "type": "click"}
    return RawMessage(partition, offset, orjson.dumps(event | {"ts": T0 + offset}), T0 + offset)


def markers(sink: MemorySink) -> list[bytes | None]:
    return [r.value for r in sink.records[TOPICS.state_changelog] if r.key == MARKER_KEY]


async def test_a_failed_state_write_commits_nothing_and_stops_every_later_write(
    partitions: OwnedPartitions, metrics: IngestMetrics, disk_room: Callable[[int], None]
) -> None:
    disk_room(1)
    sink = MemorySink()
    service = IngestService(SETTINGS, sink, partitions, ItemCatalog(), metrics)
    await partitions.own([0])
    await service.handle([click(0, 0)])
    with pytest.raises(StoreWriteError, match="No space left on device") as failed:
        await service.handle([click(0, 1)])
    store = partitions.workers[0].store
    assert store.last_offset(0) == 0  # the failed batch left the store as it was
    assert markers(sink) == [encode_marker(0), encode_marker(1)]  # its changelog went first
    sent = {topic: len(records) for topic, records in sink.records.items()}
    for later in (service.handle([click(0, 2)]), service.tick()):
        with pytest.raises(StoresStopped) as refused:
            await later
        assert refused.value.__cause__ is failed.value
    assert {topic: len(records) for topic, records in sink.records.items()} == sent
    assert store.last_offset(0) == 0 and fault_kind(refused.value) == "state_write"


class BrokerFails(MemorySink):
    """A sink whose broker never acknowledges the changelog (``at="changelog"``) or whose flush
    fails (``at="flush"``), as aiokafka reports it."""

    def __init__(self, at: str) -> None:
        super().__init__()
        self.at = at

    async def send_many(
        self,
        topic: str,
        partition: int,
        records: Iterable[tuple[bytes | None, bytes | None]],
        timestamps: Sequence[float] | None = None,
    ) -> Delivery:
        delivery = await super().send_many(topic, partition, records, timestamps)
        if self.at != "changelog" or topic != TOPICS.state_changelog:
            return delivery
        failed = asyncio.get_running_loop().create_future()
        failed.set_exception(KafkaTimeoutError("batch expired: not acknowledged"))
        return Delivery([failed], 0)

    async def flush(self) -> None:
        await super().flush()
        if self.at == "flush":
            raise KafkaConnectionError("connection to the broker lost")

    def take_owed(self) -> Acknowledgements:
        owed = super().take_owed()
        return ConnectionLost(owed) if self.at == "flush" else owed


class ConnectionLost(Acknowledgements):
    """A set of acknowledgements whose wait fails as a lost connection does."""

    def __init__(self, owed: Acknowledgements) -> None:
        super().__init__()
        self.owed = owed

    async def settle(self) -> None:
        await self.owed.settle()
        raise KafkaConnectionError("connection to the broker lost")


@pytest.mark.parametrize("at", ["changelog", "flush"])
async def test_a_changelog_or_flush_failure_commits_nothing_and_is_a_kafka_fault(
    partitions: OwnedPartitions, metrics: IngestMetrics, at: str
) -> None:
    service = IngestService(SETTINGS, BrokerFails(at), partitions, ItemCatalog(), metrics)
    await partitions.own([0])
    with pytest.raises(KafkaError) as failed:
        await service.handle([click(0, 0)])
    assert (
        partitions.workers[0].store.last_offset(0) is None and fault_kind(failed.value) == "kafka"
    )
    with pytest.raises(StoresStopped):
        await service.handle([click(0, 1)])


async def test_the_agent_stops_at_the_failed_batch(
    partitions: OwnedPartitions, metrics: IngestMetrics, disk_room: Callable[[int], None]
) -> None:
    disk_room(1)
    app, sink = create_app(SETTINGS), MemorySink()
    service = IngestService(SETTINGS, sink, partitions, ItemCatalog(), metrics)
    fail_stop = FailStop(app, metrics, grace_s=0.0)
    add_ingest_agent(app, SETTINGS, service, NoGauges(), fail_stop)  # type: ignore[arg-type]
    await partitions.own([0])
    sample = metrics.registry.get_sample_value
    assert fail_stop.healthy and sample("twinstream_worker_healthy") == 1
    async with app.agents["ingest"].test_context() as agent:
        for offset in range(3):  # one batch each: the first is written, the second fails
            await agent.put(click(0, offset).value, key=b"u1", partition=0, timestamp=T0)
            if offset == 0:
                await eventually(lambda: partitions.workers[0].store.last_offset(0) == 0)
            if offset == 1:
                await eventually(lambda: app._crashed.is_set())
        await asyncio.sleep(0.3)  # time for the third event, which no batch takes
    assert markers(sink) == [encode_marker(0), encode_marker(1)]
    assert partitions.workers[0].store.last_offset(0) == 0
    fault = fail_stop.fault
    assert isinstance(fault, FailStopped) and app.crash_reason is fault
    assert fault.kind == "state_write" and "No space left on device" in fault.detail
    assert sample("twinstream_worker_healthy") == 0
    assert sample("twinstream_worker_fatal_errors_total", {"kind": "state_write"}) == 1
    consumer = app.consumer
    assert isinstance(consumer, Consumer) and consumer.commits_refused == str(fault)
    assert await consumer._commit({TP(TOPICS.events, 0): 3}) is False


async def test_healthz_answers_503_with_the_fault(metrics: IngestMetrics) -> None:
    app = create_app(SETTINGS, http_port=28_998)
    scoring = SimpleNamespace(holder=SimpleNamespace(model=None))  # what /healthz reads
    owned = SimpleNamespace(workers={2: None})
    fail_stop = FailStop(app, metrics)
    add_views(app, requests_topic(app, SETTINGS), scoring, owned, fail_stop)  # type: ignore[arg-type]
    async with TestClient(TestServer(app.web.web_app)) as client:  # type: ignore[attr-defined]
        healthy = await client.get("/healthz")
        assert healthy.status == 200 and "fault" not in await healthy.json()
        fail_stop.trip(StoreWriteError(f"RocksDB write failed: {ENOSPC}"))
        stopped = await client.get("/healthz")
        assert stopped.status == 503
        assert await stopped.json() == {
            "partitions": [2],
            "model_version": None,
            "fault": {"kind": "state_write", "detail": f"RocksDB write failed: {ENOSPC}"},
        }
    await app.http_client.close()


def test_the_first_fault_is_the_reason_and_is_counted_once(metrics: IngestMetrics) -> None:
    fail_stop = FailStop(create_app(SETTINGS), metrics)
    first = fail_stop.trip(RuntimeError("broken"))
    assert fail_stop.trip(StoreWriteError("later")) is first and first.kind == "other"
    counted = metrics.registry.get_sample_value
    assert counted("twinstream_worker_fatal_errors_total", {"kind": "other"}) == 1
    assert counted("twinstream_worker_fatal_errors_total", {"kind": "state_write"}) is None
