"""IngestService over an in-memory sink: what one batch sends (samples, dead letters, changelog
states and markers, the changelog only once the rest is acknowledged), what the stores commit,
and the attribution tick of explicit mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.settings import Settings
from serving.scorer import ItemCatalog
from streaming.changelog import MARKER_KEY, META_PREFIX, changelog_position_key, encode_marker
from streaming.ingest import IngestService, RawMessage
from streaming.metrics import IngestMetrics
from streaming.partitions import OwnedPartitions
from tests.support.events import T0
from tests.support.events import raw_click as raw
from tests.support.sink import MemorySink

SETTINGS = Settings()
TOPICS = SETTINGS.topics


@pytest.fixture()
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture()
def service(sink: MemorySink, partitions: OwnedPartitions, metrics: IngestMetrics) -> IngestService:
    return IngestService(SETTINGS, sink, partitions, ItemCatalog(), metrics)


def count(metrics: IngestMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def test_a_batch_sends_states_then_markers_once_its_samples_are_flushed(
    service: IngestService, sink: MemorySink, partitions: OwnedPartitions
) -> None:
    await partitions.own([0, 1])
    await service.handle([raw(0, 0, 0.0), raw(1, 0, 5.0, user="u2"), raw(0, 1, 10.0)])
    assert sink.flushes == 2  # the samples', then the changelog's
    changelog = sink.records[TOPICS.state_changelog]
    assert {r.flushes_before for r in changelog} == {1}
    assert {r.flushes_before for r in sink.records[TOPICS.samples]} == {0}
    for partition, user, last in ((0, "u1", 1), (1, "u2", 0)):
        mine = [r for r in changelog if r.partition == partition]
        assert mine[-1].key == MARKER_KEY and mine[-1].value == encode_marker(last)
        assert [r.key for r in mine if r.key and not r.key.startswith(META_PREFIX)] == [
            user.encode()
        ]
        store = partitions.workers[partition].store
        assert store.last_offset(partition) == last
        position = changelog.index(mine[-1]) + 1  # the memory sink's offsets count per topic
        assert store.get_meta(changelog_position_key(partition)) == encode_marker(position)
    samples = sink.records[TOPICS.samples]
    assert samples and {r.partition for r in samples} == {0, 1}
    metrics = service.metrics
    assert count(metrics, "twinstream_samples_emitted_total") == len(samples)
    assert count(metrics, "twinstream_ingest_events_total", outcome="applied") == 3
    assert count(metrics, "twinstream_event_to_state_seconds_count") == 3
    assert count(metrics, "twinstream_ingest_batch_seconds_count") == 1
    assert service.catalog.categories(["i1"]) == ["c1"]


async def test_invalid_and_late_events_are_dead_lettered_with_their_source(
    service: IngestService, sink: MemorySink, partitions: OwnedPartitions
) -> None:
    await partitions.own([0])
    batch = [
        RawMessage(0, 0, b"{not json", T0),
        RawMessage(0, 1, None, T0),
        raw(0, 2, 10_000.0),
        raw(0, 3, 0.0),  # older than u1's watermark minus the allowed lateness
    ]
    await service.handle(batch)
    dead = sink.records[TOPICS.events_dlq]
    assert [r.headers["reason"] for r in dead] == [b"bad_json", b"missing_field", b"late"]
    assert [r.headers["source"] for r in dead] == [b"events/0/0", b"events/0/1", b"events/0/3"]
    assert dead[1].headers["detail"] == b"message has no value" and dead[1].value == b""
    assert dead[0].value == b"{not json" and dead[2].value == batch[3].value
    assert all(r.key is None and r.partition is None for r in dead)
    metrics = service.metrics
    assert count(metrics, "twinstream_dlq_messages_total", reason="bad_json") == 1
    assert count(metrics, "twinstream_dlq_messages_total", reason="late") == 1
    assert count(metrics, "twinstream_ingest_events_total", outcome="rejected") == 3
    assert count(metrics, "twinstream_ingest_events_total", outcome="applied") == 1
    assert partitions.workers[0].store.last_offset(0) == 3


async def test_events_of_paused_or_foreign_partitions_are_left_alone(
    service: IngestService, sink: MemorySink, partitions: OwnedPartitions
) -> None:
    await partitions.own([0])
    await partitions.pause([0])
    await service.handle([raw(0, 0, 0.0), raw(1, 0, 0.0)])
    assert not sink.records and sink.flushes == 2
    assert partitions.workers[0].store.last_offset(0) is None


async def test_a_duplicate_is_counted_not_applied(
    service: IngestService, partitions: OwnedPartitions
) -> None:
    await partitions.own([0])
    await service.handle([raw(0, 0, 0.0, event_id="e1"), raw(0, 1, 1.0, event_id="e1")])
    assert count(service.metrics, "twinstream_ingest_events_total", outcome="duplicate") == 1


async def test_the_tick_closes_expired_windows_changelog_first(
    tmp_path: Path, metrics: IngestMetrics, restored: list[int], sink: MemorySink
) -> None:
    settings = Settings(sample_mode="explicit")
    partitions = OwnedPartitions(settings, tmp_path / "explicit", metrics)
    service = IngestService(settings, sink, partitions, ItemCatalog(), metrics)
    await partitions.own([0, 1])
    later = settings.allowed_lateness_s + 31 * 60  # past the impression's attribution window
    await service.handle([raw(0, 0, 0.0, type="impression"), raw(0, 1, later, user="u2")])
    await service.handle([raw(1, 0, 0.0, type="impression"), raw(1, 1, later, user="u2")])
    await partitions.pause([1])
    samples_before, flushes = len(sink.records[TOPICS.samples]), sink.flushes
    changelog_before = len(sink.records[TOPICS.state_changelog])
    await service.tick()
    assert len(sink.records[TOPICS.samples]) == samples_before + 1  # partition 1 is paused
    assert sink.records[TOPICS.samples][-1].partition == 0
    closed = sink.records[TOPICS.state_changelog][changelog_before:]
    assert closed and all(r.partition == 0 and r.key.startswith(META_PREFIX) for r in closed)
    assert sink.flushes == flushes + 2  # the label-0 sample is acknowledged before the changelog
    assert sink.records[TOPICS.samples][-1].flushes_before == flushes
    assert {r.flushes_before for r in closed} == {flushes + 1}
    assert count(metrics, "twinstream_samples_emitted_total") == len(sink.records[TOPICS.samples])
    await service.tick()  # nothing left to close: no changelog record, no flush
    assert len(sink.records[TOPICS.state_changelog]) == changelog_before + len(closed)
    assert sink.flushes == flushes + 2
    await partitions.close()
