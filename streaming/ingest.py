"""The ingest service behind the ``ingest`` agent: validate, dead-letter, apply, emit, commit.

Each batch of ``events`` is validated (bad messages go to the DLQ with their reason), an event
whose body's user another partition owns is sent to that partition (:mod:`streaming.routing`),
the rest is applied per owned partition by its :class:`feature_store.PartitionWorker`, and its
training samples and state changelog records are sent through the :class:`streaming.sink.Sink`;
once the broker has them, the local RocksDB stores commit (:mod:`streaming.changelog`). The
stores themselves belong to :class:`streaming.partitions.OwnedPartitions`.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from contracts.schema import Event, InvalidEvent, Reason, parse_event
from contracts.settings import Settings
from feature_store import PartitionWorker
from feature_store.ingest import BatchResult, MetaChanges
from serving.scorer import ItemCatalog
from streaming.changelog import (
    MARKER_KEY,
    changelog_position_key,
    encode_marker,
    meta_record_key,
)
from streaming.metrics import IngestMetrics
from streaming.partitions import OwnedPartitions
from streaming.routing import Copy, Routed, Router, Split
from streaming.sink import Delivery, Sink

log = logging.getLogger(__name__)
MAX_CHANGELOG_VALUE = 8 * 1024 * 1024  # under the changelog's max.message.bytes (16 MiB)


@dataclass(frozen=True)
class RawMessage:
    """What the agent hands over per Kafka message."""

    partition: int
    offset: int
    value: bytes | None
    timestamp: float  # Kafka record time, seconds


class IngestService:
    def __init__(
        self,
        settings: Settings,
        sink: Sink,
        partitions: OwnedPartitions,
        catalog: ItemCatalog,
        metrics: IngestMetrics,
        router: Router | None = None,
    ) -> None:
        """``router``: sends the events whose body's user another partition owns to that
        partition (the worker has one); without one every event is applied where it arrived."""
        self.settings, self.sink, self.partitions = settings, sink, partitions
        self.catalog, self.metrics, self.router = catalog, metrics, router

    # --- the batch path --------------------------------------------------------------------------

    async def handle(self, messages: Sequence[RawMessage]) -> None:
        """Apply one batch: every owned partition's part is processed and its samples and
        changelog records sent, then one flush covers them all before the local commits."""
        started = time.perf_counter()
        async with self.partitions.writing():  # a failure here stops every later batch
            by_partition: dict[int, list[RawMessage]] = defaultdict(list)
            for m in messages:
                # events of a partition in hand-over are left to its next owner (not acked by us)
                if self.partitions.applying(m.partition):
                    by_partition[m.partition].append(m)
            sent = [
                await self._partition_batch(self.partitions.workers[partition], part)
                for partition, part in by_partition.items()
            ]
            await self.sink.flush()
            for worker, result, marker, part in sent:
                worker.commit(result, await self._position(worker.partition, marker))
                self._count(result, part)
        self.metrics.batch_seconds.observe(time.perf_counter() - started)

    async def _partition_batch(
        self, worker: PartitionWorker, messages: list[RawMessage]
    ) -> tuple[PartitionWorker, BatchResult, Delivery | None, list[RawMessage]]:
        """Validate, route what another partition owns, apply the rest in memory, send samples,
        dead letters and changelog records (not flushed); the changelog marker's delivery is
        returned for the commit to wait on, with the messages not routed."""
        records: list[tuple[RawMessage, Event]] = []
        for m in messages:
            try:
                records.append((m, self._parse(m)))
            except InvalidEvent as err:
                await self._dead_letter(m, err)
        split = self._split(worker, records)
        routed = await self._route(split.copies)
        for _, event in split.own:
            self.catalog.learn(event.item_id, event.category_id)
        result = worker.process([(m.offset, event) for m, event in split.own])
        for offset, late in result.rejected:
            await self._dead_letter(_find(messages, offset), late)
        await self._emit(worker.partition, result)
        await routed.acknowledged()  # on their owners' partitions before a marker covers them
        _cover(result, split)
        elsewhere = {m.offset for m in split.elsewhere}
        kept = [m for m in messages if m.offset not in elsewhere]
        return worker, result, await self._changelog(worker.partition, result), kept

    # --- events another partition owns -----------------------------------------------------------

    def _split(
        self, worker: PartitionWorker, records: list[tuple[RawMessage, Event]]
    ) -> Split[RawMessage]:
        if self.router is None:
            return Split(own=records)
        stored = worker.store.last_offset(worker.partition)
        return self.router.split(self.settings.topics.events, worker.partition, records, stored)

    async def _route(self, copies: list[Copy]) -> Routed:
        if self.router is None or not copies:
            return Routed([])
        return await self.router.send(self.settings.topics.events, copies)

    async def tick(self) -> None:
        """Close expired attribution windows (explicit mode) and send their label-0 samples."""
        async with self.partitions.writing():
            for partition, worker in self.partitions.active().items():
                expired, meta = worker.close_windows()
                samples = ((None, sample) for sample in expired)
                await self.sink.send_many(self.settings.topics.samples, partition, samples)
                self.metrics.samples.inc(len(expired))
                records = self._meta_records(meta)
                if records:  # the closed windows reach the changelog before the local store
                    topic = self.settings.topics.state_changelog
                    delivery = await self.sink.send_many(topic, partition, records)
                    await self.sink.flush()
                    await delivery.last_offset()
                worker.commit_meta(meta)

    # --- validation and dead letters -------------------------------------------------------------

    def _parse(self, m: RawMessage) -> Event:
        if m.value is None:
            raise InvalidEvent(Reason.MISSING_FIELD, "message has no value")
        s = self.settings
        return parse_event(m.value, max_bytes=s.max_event_bytes, min_ts=s.min_event_ts)

    async def _dead_letter(self, m: RawMessage, err: InvalidEvent) -> None:
        headers = [
            ("reason", err.reason.value.encode()),
            ("detail", err.detail[:500].encode()),
            ("source", f"{self.settings.topics.events}/{m.partition}/{m.offset}".encode()),
        ]
        topic = self.settings.topics.events_dlq
        await self.sink.send(topic, None, m.value or b"", None, headers)
        self.metrics.dlq.labels(reason=err.reason.value).inc()
        self.metrics.events.labels(outcome="rejected").inc()

    # --- samples and the changelog ---------------------------------------------------------------

    async def _emit(self, partition: int, result: BatchResult) -> None:
        samples = ((None, sample) for sample in result.samples)
        await self.sink.send_many(self.settings.topics.samples, partition, samples)
        self.metrics.samples.inc(len(result.samples))

    async def _changelog(self, partition: int, result: BatchResult) -> Delivery | None:
        """Send the touched states, then the offset marker; their delivery."""
        if result.offset is None:
            return None
        records: list[tuple[bytes | None, bytes | None]] = [
            (user.encode(), blob) for user, blob in result.encoded_states().items()
        ]
        records += self._meta_records(result.meta)
        records.append((MARKER_KEY, encode_marker(result.offset)))
        return await self.sink.send_many(self.settings.topics.state_changelog, partition, records)

    def _meta_records(self, meta: MetaChanges) -> list[tuple[bytes | None, bytes | None]]:
        """Metadata changes as changelog records. The sampler's come in parts of at most 1 MiB
        (:mod:`feature_store.sampler_journal`); any record still too large for a Kafka message
        stays local and is logged with its size."""
        out: list[tuple[bytes | None, bytes | None]] = []
        for key, value in meta.items():
            if value is not None and len(value) > MAX_CHANGELOG_VALUE:
                log.warning("%s (%d bytes) is not in the changelog: too large", key, len(value))
                continue
            out.append((meta_record_key(key), value))
        return out

    @staticmethod
    async def _position(partition: int, delivery: Delivery | None) -> dict[str, bytes | None]:
        """Once the broker has it all: the changelog position to store with the commit."""
        if delivery is None:
            return {}
        marker = await delivery.last_offset()
        return {changelog_position_key(partition): encode_marker(marker + 1)}

    def _count(self, result: BatchResult, messages: list[RawMessage]) -> None:
        m = self.metrics
        m.events.labels(outcome="applied").inc(result.applied)
        m.events.labels(outcome="duplicate").inc(result.duplicates)
        m.events.labels(outcome="skipped").inc(result.skipped)
        now = time.time()
        for msg in messages:
            m.event_to_state_seconds.observe(max(0.0, now - msg.timestamp))
        m.observe_states(result.states.values(), self.partitions.config.state.recent_length)


def _find(messages: list[RawMessage], offset: int) -> RawMessage:
    return next(m for m in messages if m.offset == offset)


def _cover(result: BatchResult, split: Split[RawMessage]) -> None:
    """The batch's offset (and so its marker) covers the events routed now and counts those
    routed before a restart as skipped."""
    if split.through is not None:
        through = split.through
        result.offset = through if result.offset is None else max(result.offset, through)
    result.skipped += split.stale
