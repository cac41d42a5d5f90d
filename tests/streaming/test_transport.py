"""The worker's Faust transport: the aiokafka consumer it builds has the short fetch wait and
Faust's partition assignor, which puts partition p of ``events`` and of ``score-requests`` on the
same worker for any number of workers, and tells every worker which one owns each partition."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from faust.types import TP

from contracts.settings import Settings
from streaming.app import create_app
from streaming.transport import FETCH_MAX_WAIT_MS, Consumer, ConsumerThread, Diverted, Transport

SETTINGS = Settings.from_env({})
PORT = 28_401  # member i's canonical URL has port PORT + i (nothing listens)


def worker_consumer(app: faust.App) -> tuple[ConsumerThread, Any]:
    async def build() -> tuple[ConsumerThread, Any]:
        assert isinstance(app.transport, Transport)
        thread = app.consumer._new_consumer_thread()
        assert isinstance(thread, ConsumerThread)
        consumer = thread._create_worker_consumer(app.transport)
        await consumer.stop()  # never started: closes what it made
        return thread, consumer

    return asyncio.run(build())


def test_the_app_consumes_through_the_short_wait_transport() -> None:
    _, consumer = worker_consumer(create_app(SETTINGS))
    assert consumer._fetch_max_wait_ms == FETCH_MAX_WAIT_MS < 1_500  # Faust's own is 1,500 ms


def test_the_consumer_assigns_with_fausts_assignor_though_the_app_has_no_table() -> None:
    app = create_app(SETTINGS)
    assert not app.tables.changelog_topics and app.conf.table_standby_replicas == 0
    thread, consumer = worker_consumer(app)
    assert consumer._partition_assignment_strategy == [app.assignor]
    assert thread._assignor is app.assignor and app.assignor.name == "faust"


class Cluster:
    """What aiokafka's cluster metadata tells the assignor: the partitions of each topic the
    worker consumes (``events``, ``score-requests`` and Faust's one-partition leader topic)."""

    def __init__(self, settings: Settings, app: faust.App) -> None:
        n = settings.topics.events_partitions
        self.partitions = {settings.topics.events: n, settings.topics.score_requests: n}
        self.partitions[app._leader_assignor._leader_topic_name] = 1

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.partitions.get(topic, 0)))


def member_apps(count: int, settings: Settings) -> list[faust.App]:
    return [create_app(settings, http_port=PORT + i) for i in range(count)]


def assignor(app: faust.App) -> Any:
    """The assignor the worker's consumer hands to aiokafka."""
    (chosen,) = worker_consumer(app)[1]._partition_assignment_strategy
    return chosen


def rebalance(
    apps: list[faust.App], cluster: Cluster
) -> dict[str, ConsumerProtocolMemberAssignment]:
    """One rebalance of the group ``apps``: the first is the leader that assigns; each member
    hears its assignment (its URL names it)."""
    topics = set(cluster.partitions)
    members = {str(a.conf.canonical_url): assignor(a).metadata(topics) for a in apps}
    assignments = assignor(apps[0]).assign(cluster, members)
    for app in apps:
        assignor(app).on_assignment(assignments[str(app.conf.canonical_url)])
    return dict(assignments)


def assert_co_partitioned_and_routed(
    apps: list[faust.App], assignments: dict[str, Any], settings: Settings
) -> None:
    events, requests = settings.topics.events, settings.topics.score_requests
    owner: dict[TP, str] = {}
    for url, assignment in assignments.items():
        held = {topic: sorted(partitions) for topic, partitions in assignment.assignment}
        assert held.get(events, []) == held.get(requests, [])  # co-partitioned
        owner |= {TP(requests, p): url for p in held.get(requests, [])}
    assert sorted(tp.partition for tp in owner) == list(range(settings.topics.events_partitions))
    for app in apps:  # every member knows every partition's owner
        routes = app.router.external_topics_metadata()
        known = {TP(requests, p): url for url, tps in routes.items() for p in tps.get(requests, [])}
        assert known == owner


@pytest.mark.parametrize("partitions", [4, 8])
@pytest.mark.parametrize("workers", [1, 2, 3, 5])
def test_fausts_assignor_co_partitions_events_and_requests(workers: int, partitions: int) -> None:
    settings = Settings.from_env({"TWINSTREAM_EVENTS_PARTITIONS": str(partitions)})
    apps = member_apps(workers, settings)
    assignments = rebalance(apps, Cluster(settings, apps[0]))
    assert_co_partitioned_and_routed(apps, assignments, settings)


def test_co_partitioned_through_workers_joining_and_leaving() -> None:
    """Each rebalance starts from the last assignment (the members send it): 3, then 4, then 2."""
    apps = member_apps(4, SETTINGS)
    cluster = Cluster(SETTINGS, apps[0])
    for group in (apps[:3], apps, [apps[3], apps[1]]):
        assert_co_partitioned_and_routed(group, rebalance(group, cluster), SETTINGS)


class FetchedRecord:
    """What the diverted batches carry of an aiokafka ConsumerRecord."""

    def __init__(self, offset: int) -> None:
        self.offset, self.value, self.timestamp = offset, b"{}", 1_000


def test_a_diverted_topic_comes_as_one_batch_and_commits_the_offset_acknowledged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events, requests = TP(SETTINGS.topics.events, 1), TP(SETTINGS.topics.score_requests, 1)
    fetched = {events: [FetchedRecord(5), FetchedRecord(6)], requests: [FetchedRecord(9)]}

    async def fetch(self: Any, timeout: float) -> tuple[Any, Any]:
        return dict(fetched), {events, requests}

    monkeypatch.setattr(faust.transport.consumer.Consumer, "_wait_next_records", fetch)
    app = create_app(SETTINGS)

    async def run() -> None:
        diverted = Diverted({SETTINGS.topics.events})
        app.diverted = diverted  # type: ignore[attr-defined]
        consumer = app.consumer
        assert isinstance(consumer, Consumer)
        left, _ = await consumer._wait_next_records(1.0)
        assert left == {requests: fetched[requests]}  # Faust's streams get the rest as before
        batch = diverted.batches.get_nowait()
        assert batch.records == {events: fetched[events]}
        assert batch.generation == app.consumer_generation_id
        assert consumer._filter_committable_offsets([events]) == {}  # nothing acknowledged yet
        consumer.ack_batch(events, 6, 2)
        assert consumer._filter_committable_offsets([events]) == {events: 7}
        await consumer.on_partitions_revoked({events})
        assert consumer._filter_committable_offsets([events]) == {}

    asyncio.run(run())


@pytest.mark.parametrize(("setting", "codec"), [(None, None), ("zstd", "zstd"), ("lz4", "lz4")])
def test_the_worker_producer_compresses_as_the_deployment_says(
    monkeypatch: pytest.MonkeyPatch, setting: str | None, codec: str | None
) -> None:
    if setting is not None:
        monkeypatch.setenv("TWINSTREAM_WORKER_COMPRESSION", setting)
    producer = create_app(SETTINGS).producer
    assert producer._settings_extra()["compression_type"] == codec
    assert producer._settings_extra()["enable_idempotence"] is True


def test_an_unknown_compression_is_refused() -> None:
    with pytest.raises(ValueError, match="worker_compression"):
        Settings.from_env({"TWINSTREAM_WORKER_COMPRESSION": "brotli"})
