"""Routing without a broker: the owner of a user is the project producer's partition; events and
score requests that arrive elsewhere are sent on to it (keyed by the body's user, with an event id
from their source), their source offsets covered only once the copies are acknowledged; a copy
sent twice is applied once; bad messages are dead-lettered where they arrive."""

from __future__ import annotations

import asyncio
import random

import faust
import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from kafka.partitioner.default import murmur2
from prometheus_client import CollectorRegistry

from contracts.schema import parse_event
from contracts.settings import Settings
from serving.metrics import ScoringMetrics
from serving.scorer import ItemCatalog
from streaming.agents.score import add_score_agent, requests_topic
from streaming.app import create_app
from streaming.changelog import MARKER_KEY, encode_marker
from streaming.ingest import IngestService, RawMessage
from streaming.metrics import IngestMetrics
from streaming.partitions import OwnedPartitions
from streaming.routing import Router, owner_partition, owner_partitions
from streaming.scoring import ScoringService
from tests.support.events import T0
from tests.support.sink import MemorySink

SETTINGS = Settings()
TOPICS = SETTINGS.topics
N = TOPICS.events_partitions
USERS = [f"user-{i}" for i in range(40)]


def raw(partition: int, offset: int, user: str, ts: float = 0.0, **fields: str) -> RawMessage:
    event = {"user_id": user, "item_id": "i1", "category_id": "c1", "type": "click"} | fields
    return RawMessage(partition, offset, orjson.dumps(event | {"ts": T0 + ts}), T0 + ts)


def user_owned_by(partition: int) -> str:
    return next(u for u in USERS if owner_partition(u, N) == partition)


def routed(metrics: IngestMetrics, agent: str) -> float | None:
    return metrics.registry.get_sample_value("twinstream_routed_records_total", {"agent": agent})


@pytest.fixture()
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture()
def service(sink: MemorySink, partitions: OwnedPartitions, metrics: IngestMetrics) -> IngestService:
    router = Router(sink, N, metrics.routed.labels(agent="ingest"))
    return IngestService(SETTINGS, sink, partitions, ItemCatalog(), metrics, router)


def test_the_owner_is_the_murmur2_partition_of_both_producers() -> None:
    """kafka-python's producer (the project's) and aiokafka's (Faust's: HTTP forwarding)."""
    rng = random.Random(3)
    keys = [str(rng.randrange(10**9)) for _ in range(500)] + USERS
    aiokafka_partition = DefaultPartitioner()
    for key in keys:
        expected = (murmur2(key.encode()) & 0x7FFFFFFF) % N
        assert owner_partition(key, N) == expected
        assert aiokafka_partition(key.encode(), list(range(N)), list(range(N))) == expected


def test_the_batch_owners_are_the_murmur2_partitions_of_keys_of_every_length() -> None:
    """Every key length (each a numpy pass of its own: whole words, 0-3 tail bytes), non-ASCII
    ids and several partition counts, against kafka-python's murmur2 one key at a time."""
    rng = random.Random(5)
    keys = [str(rng.randrange(10**9)) for _ in range(2_000)] + USERS + [""]
    keys += ["".join(chr(rng.randrange(32, 0x3000)) for _ in range(n % 41)) for n in range(400)]
    for n in (1, N, 7, 12):
        expected = [(murmur2(key.encode()) & 0x7FFFFFFF) % n for key in keys]
        assert owner_partitions(keys, n) == expected


def test_the_split_keeps_owned_events_and_copies_the_others(metrics: IngestMetrics) -> None:
    router = Router(MemorySink(), N, metrics.routed.labels(agent="ingest"))
    mine, other = user_owned_by(1), user_owned_by(3)
    messages = [raw(1, 5, mine), raw(1, 6, other), raw(1, 7, other, event_id="e7"), raw(1, 8, mine)]
    records = [(m, parse_event(m.value or b"")) for m in messages]
    split = router.split(TOPICS.events, 1, records, stored=None)
    assert [m.offset for m, _ in split.own] == [5, 8]
    assert [m.offset for m in split.elsewhere] == [6, 7] and split.through == 7
    assert [(c.partition, c.key, c.timestamp) for c in split.copies] == [
        (3, other.encode(), T0)
    ] * 2
    ids = [parse_event(c.value).event_id for c in split.copies]
    assert ids == ["events/1/6", "e7"]  # the source coordinates, else its own id
    again = router.split(TOPICS.events, 1, records, stored=6)  # 6 was routed before a restart
    assert [parse_event(c.value).event_id for c in again.copies] == ["e7"] and again.stale == 1


async def test_events_elsewhere_are_sent_to_their_owner_before_the_marker_covers_them(
    service: IngestService, sink: MemorySink, partitions: OwnedPartitions
) -> None:
    await partitions.own(range(N))
    mine, other = user_owned_by(0), user_owned_by(2)
    await service.handle([raw(0, 0, mine), raw(0, 1, other, 1.0), raw(0, 2, other, 2.0)])
    copies = sink.records[TOPICS.events]
    assert [(r.partition, r.key, r.timestamp) for r in copies] == [
        (2, other.encode(), T0 + 1.0),
        (2, other.encode(), T0 + 2.0),
    ]
    assert partitions.state(0, other) is None and partitions.state(2, other) is None
    assert partitions.state(0, mine) is not None
    markers = [r for r in sink.records[TOPICS.state_changelog] if r.key == MARKER_KEY]
    assert [(r.partition, r.value) for r in markers] == [(0, encode_marker(2))]
    assert partitions.workers[0].store.last_offset(0) == 2
    assert routed(service.metrics, "ingest") == 2
    # the owner applies the copies, even when a crash made the router send them twice
    copies_at_owner = [RawMessage(2, i, r.value, T0) for i, r in enumerate(copies + copies)]
    await service.handle(copies_at_owner)
    state = partitions.state(2, other)
    assert state is not None and len(state.log) == 2
    duplicates = service.metrics.registry.get_sample_value(
        "twinstream_ingest_events_total", {"outcome": "duplicate"}
    )
    assert duplicates == 2 and routed(service.metrics, "ingest") == 2


async def test_a_batch_seen_again_after_its_commit_routes_nothing(
    service: IngestService, sink: MemorySink, partitions: OwnedPartitions
) -> None:
    await partitions.own([1])
    batch = [raw(1, 0, user_owned_by(3)), raw(1, 1, user_owned_by(3), 1.0)]
    await service.handle(batch)
    await service.handle(batch)
    assert len(sink.records[TOPICS.events]) == 2 and routed(service.metrics, "ingest") == 2
    skipped = service.metrics.registry.get_sample_value(
        "twinstream_ingest_events_total", {"outcome": "skipped"}
    )
    assert skipped == 2


async def test_bad_messages_are_dead_lettered_where_they_arrive(
    service: IngestService, sink: MemorySink, partitions: OwnedPartitions
) -> None:
    await partitions.own([3])
    bad = RawMessage(3, 0, b'{"user_id": "' + user_owned_by(0).encode() + b'"}', T0)
    await service.handle([bad, RawMessage(3, 1, b"{", T0)])
    dead = sink.records[TOPICS.events_dlq]
    assert [r.headers["source"] for r in dead] == [b"events/3/0", b"events/3/1"]
    assert not sink.records[TOPICS.events] and routed(service.metrics, "ingest") == 0


async def test_the_score_agent_answers_from_the_owner_or_sends_the_request_there(
    partitions: OwnedPartitions, metrics: IngestMetrics, sink: MemorySink
) -> None:
    app: faust.App = create_app(SETTINGS)
    scoring = ScoringService(partitions, ItemCatalog(), ScoringMetrics.create(CollectorRegistry()))
    router = Router(sink, N, metrics.routed.labels(agent="score"))
    add_score_agent(app, requests_topic(app, SETTINGS), SETTINGS, scoring, sink, router)
    await partitions.own([0, 1])
    held, elsewhere = user_owned_by(1), user_owned_by(3)

    def request(rid: str, user: str) -> bytes:
        return orjson.dumps({"request_id": rid, "user_id": user, "items": ["1"]})

    async with app.agents["score"].test_context() as agent:
        await agent.put(request("r1", held), key=b"k1", partition=0, timestamp=T0)
        await agent.put(request("r2", elsewhere), key=b"k2", partition=0, timestamp=T0)
        await agent.put(b"{", key=b"k3", partition=2, timestamp=T0)
        for _ in range(500):  # the agent runs in this event loop: yield to it
            if len(sink.records[TOPICS.scores]) == 2:
                break
            await asyncio.sleep(0.02)
    answers = sink.records[TOPICS.scores]
    assert [(r.key, r.partition) for r in answers] == [(b"k1", 0), (b"k3", 2)]
    assert orjson.loads(answers[0].value or b"")["request_id"] == "r1"
    [copy] = sink.records[TOPICS.score_requests]
    assert (copy.partition, copy.key, copy.timestamp) == (3, elsewhere.encode(), T0)
    assert orjson.loads(copy.value or b"")["request_id"] == "r2"
    assert routed(metrics, "score") == 1
