"""The worker's agents under Faust's test_context (no broker): the ingest agent hands batches to
the ingest service with each message's partition, offset and time; the score agent answers on
the request's partition with its key; the rebalance hooks pause and own events partitions."""

from __future__ import annotations

import faust
import orjson
import pytest
from faust.types import TP
from prometheus_client import CollectorRegistry

from contracts.settings import Settings
from serving.metrics import ScoringMetrics
from serving.scorer import ItemCatalog
from streaming.agents.ingest import add_ingest_agent, add_rebalance_hooks
from streaming.agents.score import add_score_agent, requests_topic
from streaming.app import create_app
from streaming.changelog import MARKER_KEY, encode_marker
from streaming.failstop import FailStop
from streaming.ingest import IngestService
from streaming.metrics import IngestMetrics
from streaming.partitions import OwnedPartitions
from streaming.scoring import ScoringService
from tests.support.events import T0
from tests.support.gauges import NoGauges
from tests.support.sink import MemorySink
from tests.support.waiting import eventually

SETTINGS = Settings()
TOPICS = SETTINGS.topics


@pytest.fixture()
def app() -> faust.App:
    return create_app(SETTINGS)


async def test_the_ingest_agent_applies_what_arrives(
    app: faust.App, partitions: OwnedPartitions, metrics: IngestMetrics
) -> None:
    sink = MemorySink()
    service = IngestService(SETTINGS, sink, partitions, ItemCatalog(), metrics)
    gauges = NoGauges()
    add_ingest_agent(app, SETTINGS, service, gauges, FailStop(app, metrics))  # type: ignore[arg-type]
    await partitions.own([2])
    event = {"user_id": "u1", "item_id": "i1", "category_id": "c1", "type": "click"}
    async with app.agents["ingest"].test_context() as agent:
        for k in range(3):
            value = orjson.dumps(event | {"ts": T0 + k})
            await agent.put(value, key=b"u1", partition=2, timestamp=T0 + k)
        await eventually(lambda: partitions.workers[2].store.last_offset(2) == 2)
    markers = [r for r in sink.records[TOPICS.state_changelog] if r.key == MARKER_KEY]
    assert markers[-1].partition == 2 and markers[-1].value == encode_marker(2)
    applied = metrics.registry.get_sample_value(
        "twinstream_ingest_events_total", {"outcome": "applied"}
    )
    assert applied == 3


async def test_the_score_agent_answers_on_the_request_partition(
    app: faust.App, partitions: OwnedPartitions
) -> None:
    sink = MemorySink()
    scoring = ScoringService(partitions, ItemCatalog(), ScoringMetrics.create(CollectorRegistry()))
    add_score_agent(app, requests_topic(app, SETTINGS), SETTINGS, scoring, sink)
    request = orjson.dumps({"request_id": "r1", "user_id": "u1", "items": ["1"]})
    await partitions.own([1])  # partition 1 is held here: its requests reach the scorer
    async with app.agents["score"].test_context() as agent:
        await agent.put(request, key=b"r1", partition=1)
        await agent.put(b"{", key=b"r2", partition=0)
        await eventually(lambda: len(sink.records[TOPICS.scores]) == 2)
    first, second = sink.records[TOPICS.scores]
    assert (first.key, first.partition) == (b"r1", 1)
    assert orjson.loads(first.value or b"")["error"]["code"] == "no_model"
    assert (second.key, second.partition) == (b"r2", 0)
    assert orjson.loads(second.value or b"")["error"]["code"] == "bad_json"
    counted = scoring.metrics.registry.get_sample_value(
        "twinstream_score_requests_total", {"transport": "kafka", "outcome": "no_model"}
    )
    assert counted == 1


async def test_rebalance_hooks_pause_then_own_only_events_partitions(
    app: faust.App, partitions: OwnedPartitions, restored: list[int], metrics: IngestMetrics
) -> None:
    add_rebalance_hooks(app, SETTINGS, partitions, FailStop(app, metrics))
    await app.on_partitions_assigned.send({TP(TOPICS.events, 0), TP(TOPICS.events, 1)})
    assert sorted(partitions.workers) == [0, 1] and restored == [0, 1]
    await app.on_partitions_revoked.send({TP(TOPICS.events, 1), TP(TOPICS.score_requests, 0)})
    assert partitions.paused == {1} and sorted(partitions.active()) == [0]
    await app.on_partitions_assigned.send({TP(TOPICS.events, 0), TP(TOPICS.score_requests, 1)})
    assert sorted(partitions.workers) == [0] and not partitions.path(1).exists()
    assert partitions.active().keys() == {0}  # 1 stays paused until it is assigned again
    await app.on_partitions_assigned.send({TP(TOPICS.events, 1)})
    assert partitions.active().keys() == {1} and restored == [0, 1, 1]
