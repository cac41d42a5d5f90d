"""Records the broker refuses, without a broker: a sample, a dead letter or a routed copy of a
batch that is not delivered stops the ingest service before its changelog (no marker, nothing
committed locally, no later batch), as does a label-0 sample of the attribution tick; through the
agent the worker fail-stops with a ``kafka`` fault and commits no offset. :class:`FaustSink`'s
flush waits for its own records only, all of them, and fails on a refused one; the score agent's
:class:`BestEffortSink` logs a refused answer and never holds a flush up."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import orjson
import pytest
from aiokafka.errors import MessageSizeTooLargeError
from faust.types import TP

from contracts.settings import Settings
from serving.scorer import ItemCatalog
from streaming.agents.ingest import add_ingest_agent
from streaming.app import create_app
from streaming.changelog import MARKER_KEY, encode_marker
from streaming.failstop import FailStop, FailStopped, fault_kind
from streaming.ingest import IngestService, RawMessage
from streaming.metrics import IngestMetrics
from streaming.partitions import OwnedPartitions, StoresStopped
from streaming.routing import Router, owner_partition
from streaming.sink import BestEffortSink, DeliveryFailed, FaustSink
from streaming.transport import Consumer
from tests.support.events import T0
from tests.support.gauges import NoGauges
from tests.support.sink import MemorySink
from tests.support.waiting import eventually

SETTINGS = Settings()
TOPICS = SETTINGS.topics
N = TOPICS.events_partitions
TOO_LARGE = MessageSizeTooLargeError()  # what aiokafka raises for a broker's RecordTooLarge


def event(
    partition: int, offset: int, user: str = "u1", ts: float | None = None, **fields: str
) -> RawMessage:
    """An event message at ``T0 + ts`` (default: ``T0 + offset``)."""
    at = T0 + (offset if ts is None else ts)
    body = {"user_id": user, "item_id": "i1", "category_id": "c1", "type": "click"} | fields
    return RawMessage(partition, offset, orjson.dumps(body | {"ts": at}), at)


def user_owned_by(partition: int) -> str:
    return next(u for u in (f"user-{i}" for i in range(100)) if owner_partition(u, N) == partition)


@pytest.fixture()
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture()
def service(sink: MemorySink, partitions: OwnedPartitions, metrics: IngestMetrics) -> IngestService:
    router = Router(sink, N, metrics.routed.labels(agent="ingest"))
    return IngestService(SETTINGS, sink, partitions, ItemCatalog(), metrics, router)


# --- the ingest service ---------------------------------------------------------------------------

REFUSED = {  # what is refused: the topic, and a batch (on partitions 0 and 1) that sends it
    "sample": (TOPICS.samples, [event(0, 0), event(0, 1), event(1, 0, "u2")]),
    "dead letter": (TOPICS.events_dlq, [RawMessage(0, 0, b"{", T0), event(0, 1), event(1, 0)]),
    "routed copy": (TOPICS.events, [event(0, 0, user_owned_by(0)), event(0, 1, user_owned_by(2))]),
}


@pytest.mark.parametrize("refused", REFUSED)
async def test_a_refused_record_stops_the_batch_before_its_changelog(
    service: IngestService, sink: MemorySink, partitions: OwnedPartitions, refused: str
) -> None:
    topic, batch = REFUSED[refused]
    await partitions.own(range(N))
    sink.refuse(topic, TOO_LARGE)
    with pytest.raises(DeliveryFailed) as failed:
        await service.handle(batch)
    assert failed.value.topic == topic and failed.value.__cause__ is TOO_LARGE
    assert fault_kind(failed.value) == "kafka"
    assert sink.records[topic]  # it was sent, and the flush found it refused
    assert not sink.records[TOPICS.state_changelog]  # no marker covers the batch
    assert all(partitions.workers[p].store.last_offset(p) is None for p in range(N))
    sent = {t: len(records) for t, records in sink.records.items()}
    with pytest.raises(StoresStopped):  # the next batch is refused, and sends nothing
        await service.handle([event(0, 2)])
    assert {t: len(records) for t, records in sink.records.items()} == sent


@pytest.mark.parametrize("delivered", REFUSED)
async def test_the_same_batch_delivered_is_committed_once_all_is_acknowledged(
    service: IngestService, sink: MemorySink, partitions: OwnedPartitions, delivered: str
) -> None:
    topic, batch = REFUSED[delivered]
    await partitions.own(range(N))
    await service.handle(batch)
    assert sink.records[topic] and {r.flushes_before for r in sink.records[topic]} == {0}
    changelog = sink.records[TOPICS.state_changelog]
    assert {r.flushes_before for r in changelog} == {1} and len(sink.owed) == 0
    markers = {r.partition: r.value for r in changelog if r.key == MARKER_KEY}
    assert markers[0] == encode_marker(1) and partitions.workers[0].store.last_offset(0) == 1


async def test_a_refused_label_0_sample_keeps_the_closed_windows_out_of_the_changelog(
    tmp_path: Path, metrics: IngestMetrics, restored: list[int], sink: MemorySink
) -> None:
    settings = Settings(sample_mode="explicit")
    partitions = OwnedPartitions(settings, tmp_path / "explicit", metrics)
    service = IngestService(settings, sink, partitions, ItemCatalog(), metrics)
    await partitions.own([0])
    later = settings.allowed_lateness_s + 31 * 60  # past the impression's attribution window
    await service.handle([event(0, 0, ts=0.0, type="impression"), event(0, 1, "u2", later)])
    store = partitions.workers[0].store
    pending = dict(store.meta_items("pending/0/"))
    changelog_before = len(sink.records[TOPICS.state_changelog])
    sink.refuse(TOPICS.samples, TOO_LARGE)
    with pytest.raises(DeliveryFailed):
        await service.tick()
    assert sink.records[TOPICS.samples][-1].value  # the label-0 sample, refused
    assert len(sink.records[TOPICS.state_changelog]) == changelog_before  # windows still open
    assert pending and dict(store.meta_items("pending/0/")) == pending
    with pytest.raises(StoresStopped):
        await service.tick()
    await partitions.close()


async def test_the_agent_fail_stops_on_a_refused_sample_and_commits_nothing(
    partitions: OwnedPartitions, metrics: IngestMetrics, sink: MemorySink
) -> None:
    app = create_app(SETTINGS)
    service = IngestService(SETTINGS, sink, partitions, ItemCatalog(), metrics)
    fail_stop = FailStop(app, metrics, grace_s=0.0)
    add_ingest_agent(app, SETTINGS, service, NoGauges(), fail_stop)  # type: ignore[arg-type]
    await partitions.own([0])
    sink.refuse(TOPICS.samples, TOO_LARGE)
    async with app.agents["ingest"].test_context() as agent:
        await agent.put(event(0, 0).value, key=b"u1", partition=0, timestamp=T0)
        await eventually(lambda: app._crashed.is_set())
    fault = fail_stop.fault
    assert isinstance(fault, FailStopped) and app.crash_reason is fault
    assert fault.kind == "kafka" and f"{TOPICS.samples}/0" in fault.detail
    sample = metrics.registry.get_sample_value
    assert sample("twinstream_worker_healthy") == 0
    assert sample("twinstream_worker_fatal_errors_total", {"kind": "kafka"}) == 1
    assert not sink.records[TOPICS.state_changelog]
    assert partitions.workers[0].store.last_offset(0) is None
    consumer = app.consumer
    assert isinstance(consumer, Consumer) and consumer.commits_refused == str(fault)
    assert await consumer._commit({TP(TOPICS.events, 0): 1}) is False


# --- the sinks over Faust's producer --------------------------------------------------------------


class Producer:
    """Faust's producer as the sinks use it (``send``, and aiokafka's ``create_batch`` and
    ``send_batch``), with batches of two records and acknowledgements the test gives."""

    def __init__(self) -> None:
        self.acks: list[asyncio.Future[Any]] = []

    def _ack(self) -> asyncio.Future[Any]:
        self.acks.append(asyncio.get_running_loop().create_future())
        return self.acks[-1]

    async def send(self, topic: str, *args: Any) -> asyncio.Future[Any]:
        return self._ack()

    def _ensure_producer(self) -> Producer:
        return self

    def create_batch(self) -> SimpleNamespace:
        records: list[int] = []

        def append(**record: Any) -> SimpleNamespace | None:
            if len(records) == 2:
                return None
            records.append(len(records))
            return SimpleNamespace(offset=records[-1])

        return SimpleNamespace(append=append, record_count=records.__len__)

    async def send_batch(self, batch: Any, topic: str, partition: int) -> asyncio.Future[Any]:
        return self._ack()


def faust_app(producer: Producer) -> faust.App:
    return SimpleNamespace(producer=producer)  # type: ignore[return-value]


async def test_a_flush_waits_for_every_record_of_its_sink_and_fails_on_a_refused_one() -> None:
    producer = Producer()
    ingest, answers = FaustSink(faust_app(producer)), BestEffortSink(faust_app(producer))
    await answers.send(TOPICS.scores, None, b"answer", 0)  # never acknowledged
    await ingest.send(TOPICS.events_dlq, None, b"{")
    delivery = await ingest.send_many(TOPICS.samples, 3, [(None, b"s")] * 5)  # batches 2, 2, 1
    assert len(delivery.batches) == 3 and delivery.last_in_batch == 0
    flush = asyncio.create_task(ingest.flush())
    dead_letter, *sample_batches = producer.acks[1:]
    for ack in (dead_letter, sample_batches[0], sample_batches[2]):
        ack.set_result(SimpleNamespace(offset=7))
    await asyncio.sleep(0.05)
    assert not flush.done()  # the second batch of samples is still owed
    sample_batches[1].set_exception(TOO_LARGE)
    with pytest.raises(DeliveryFailed, match=f"{TOPICS.samples}/3") as failed:
        await flush
    assert failed.value.__cause__ is TOO_LARGE and fault_kind(failed.value) == "kafka"
    await ingest.send(TOPICS.samples, None, b"s", 1)
    producer.acks[-1].set_result(SimpleNamespace(offset=8))
    await asyncio.wait_for(ingest.flush(), 1.0)  # owed: only what was sent since
    assert not producer.acks[0].done()  # the answer never held a flush up


async def test_a_refused_answer_is_logged_and_holds_nothing_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    producer = Producer()
    answers = BestEffortSink(faust_app(producer))
    await answers.send(TOPICS.scores, b"k", b"answer", 2)
    with caplog.at_level(logging.WARNING, logger="streaming.sink"):
        producer.acks[0].set_exception(TOO_LARGE)
        await asyncio.sleep(0)
        await asyncio.wait_for(answers.flush(), 1.0)
    assert f"a record for {TOPICS.scores}/2 was not delivered" in caplog.text
