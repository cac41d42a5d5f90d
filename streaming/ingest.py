"""The ingest service behind the ``ingest`` agent: validate, dead-letter, apply, emit, commit.

Each batch of ``events`` is validated (bad messages go to the DLQ with their reason), an event whose
body's user another partition owns is sent to that partition (:mod:`streaming.routing`), the rest is
applied per owned partition by its :class:`feature_store.PartitionWorker`, and its training samples
are sent through the :class:`streaming.sink.Sink`. Once the broker has acknowledged all of these,
the state changelog records and offset markers are sent; once it has those, the local RocksDB stores
commit (:mod:`streaming.changelog`), after which the agent lets Faust commit the batch's offsets.
:meth:`IngestService.handle` returns once its batch is durable; :meth:`IngestService.push` returns
once it is applied in memory and sent, and completes it while the next batches are applied
(:mod:`streaming.pipeline`). A marker therefore never covers an event whose sample, dead letter or
copy the broker refused: the flush raises (:class:`streaming.sink.DeliveryFailed`), the worker
fail-stops (:mod:`streaming.failstop`), and a restart applies the batch again. The stores themselves
belong to :class:`streaming.partitions.OwnedPartitions`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from contracts.schema import (
    MAX_FUTURE_S,
    Event,
    InvalidEvent,
    Reason,
    parse_event,
    parse_plain_event,
)
from contracts.settings import Settings
from feature_store import PartitionWorker
from feature_store.clustering_sweep import SweepConfig, sweep_stale
from feature_store.ingest import BatchResult
from serving.item_embeddings import ClusterMetrics
from serving.scorer import ItemCatalog
from streaming.changelog import (
    Records,
    changelog_position_key,
    changelog_records,
    encode_marker,
    meta_records,
)
from streaming.metrics import IngestMetrics
from streaming.partitions import OwnedPartitions
from streaming.pipeline import Done, InFlight, Staged, nothing, yield_to_sender
from streaming.routing import Copy, Router, Split
from streaming.sink import Delivery, Sink


@dataclass(frozen=True)
class RawMessage:
    """What the agent hands over per Kafka message."""

    partition: int
    offset: int
    value: bytes | None
    timestamp: float  # Kafka record time, seconds


@dataclass(frozen=True)
class Applied:
    """One partition's part of a batch, applied in memory: its worker, the result to commit, the
    messages it covers (those not routed elsewhere) and its changelog records, marker last."""

    worker: PartitionWorker
    result: BatchResult
    kept: list[RawMessage]
    changelog: Records


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
        self.cluster_metrics: ClusterMetrics | None = None  # set by streaming.worker
        self.cluster_sweep = SweepConfig()
        self.in_flight = InFlight(self._seal, self._finish)
        partitions.settle = self.in_flight.drain  # before a rebalance changes what is owned

    # --- the batch path --------------------------------------------------------------------------

    async def handle(self, messages: Sequence[RawMessage]) -> None:
        """Apply one batch and return once it is durable: every owned partition's part is
        processed and its samples, dead letters and copies sent, one flush covers them all; then
        the changelog records of every part are sent, a second flush covers those, and the local
        stores commit. Batches pushed before (:meth:`push`) complete first."""
        await self.push(messages)
        await self.drain()

    async def push(self, messages: Sequence[RawMessage], done: Done = nothing) -> None:
        """Apply one batch in memory and send its samples, dead letters and copies; then take
        the older batches in flight one step on (:mod:`streaming.pipeline`). ``done`` runs once
        this batch is durable (its offsets may then be committed)."""
        started = time.perf_counter()
        async with self.partitions.writing():  # a failure here stops every later batch
            staged = Staged(await self._apply_all(messages), done, started)
            staged.sent = self.sink.take_owed()
            self.in_flight.add(staged)
        await yield_to_sender()  # the producer ships what this batch sent
        async with self.partitions.writing():
            await self.in_flight.advance()

    async def step(self) -> None:
        """Take the oldest batch in flight one step on (nothing to wait for: a step a batch
        would have made anyway). For an idle agent: done in two steps."""
        async with self.partitions.writing():
            await self.in_flight.step()

    async def drain(self) -> None:
        """Once every batch pushed is durable."""
        async with self.partitions.writing():
            await self.in_flight.drain()

    async def _apply_all(self, messages: Sequence[RawMessage]) -> list[Applied]:
        by_partition: dict[int, list[RawMessage]] = defaultdict(list)
        for m in messages:
            # events of a partition in hand-over are left to its next owner (not acked by us)
            if self.partitions.applying(m.partition):
                by_partition[m.partition].append(m)
        return [
            await self._apply(self.partitions.workers[partition], part)
            for partition, part in by_partition.items()
        ]

    async def _seal(self, staged: Staged) -> None:
        """Its samples acknowledged: send its changelog records (markers last)."""
        await staged.sent.settle()  # acknowledged before a marker covers their events
        staged.markers = [await self._send_changelog(a) for a in staged.applied]
        staged.logged = self.sink.take_owed()

    async def _finish(self, staged: Staged) -> None:
        """Its changelog acknowledged: commit the stores, count, let its offsets go."""
        await staged.logged.settle()
        for a, marker in zip(staged.applied, staged.markers, strict=True):
            a.worker.commit(a.result, await self._position(a.worker.partition, marker))
            self._count(a.result, a.kept)
        self.metrics.batch_seconds.observe(time.perf_counter() - staged.started)
        staged.done()

    async def _apply(self, worker: PartitionWorker, messages: list[RawMessage]) -> Applied:
        """Validate, route what another partition owns, apply the rest in memory, send samples,
        dead letters and copies (not flushed); the result, with the messages not routed and the
        changelog records (encoded now, while the broker acknowledges what was sent)."""
        records: list[tuple[RawMessage, Event]] = []
        for m, event in self._parse_plain(messages):
            try:
                records.append((m, event or self._parse(m)))
            except InvalidEvent as err:
                await self._dead_letter(m, err)
        split = self._split(worker, records)
        await self._route(split.copies)
        for _, event in split.own:
            self.catalog.learn(event.item_id, event.category_id)
        result = worker.process([(m.offset, event) for m, event in split.own])
        for offset, late in result.rejected:
            await self._dead_letter(_find(messages, offset), late)
        await self._emit(worker.partition, result)
        _cover(result, split)
        elsewhere = {m.offset for m in split.elsewhere}
        kept = [m for m in messages if m.offset not in elsewhere]
        return Applied(worker, result, kept, changelog_records(result))

    # --- events another partition owns -----------------------------------------------------------

    def _split(
        self, worker: PartitionWorker, records: list[tuple[RawMessage, Event]]
    ) -> Split[RawMessage]:
        if self.router is None:
            return Split(own=records)
        return self.router.split(
            self.settings.topics.events, worker.partition, records, worker.last_offset
        )

    async def _route(self, copies: list[Copy]) -> None:
        """Send the copies through the sink: the batch's first flush covers them."""
        if self.router is not None and copies:
            await self.router.send(self.settings.topics.events, copies)

    async def tick(self) -> None:
        """Close expired attribution windows (explicit mode) and send their label-0 samples;
        once the broker has them, the closed windows' changelog records; once it has those, the
        local stores forget the windows."""
        async with self.partitions.writing():
            await self.in_flight.drain()  # its pending impressions and sampler before the tick's
            active = self.partitions.active()
            closed = {p: worker.close_windows() for p, worker in active.items()}
            samples: dict[int, Records] = {
                p: [(None, s) for s in expired] for p, (expired, _) in closed.items()
            }
            await self._send_and_flush(self.settings.topics.samples, samples)
            self.metrics.samples.inc(sum(map(len, samples.values())))
            changes = {p: meta_records(meta) for p, (_, meta) in closed.items()}
            await self._send_and_flush(self.settings.topics.state_changelog, changes)
            for partition, (_, meta) in closed.items():
                active[partition].commit_meta(meta)
        await self._sweep_clusters()

    async def _sweep_clusters(self) -> None:
        """Rebuild stale TWIN-V2 clusters of decoded states within the sweep's CPU budget
        (:mod:`feature_store.clustering_sweep`); their changelog records are acknowledged before
        the stores commit them, as a batch's."""
        async with self.partitions.writing():
            await self.in_flight.drain()
            active = self.partitions.active()
            started = time.perf_counter()
            swept = {p: sweep_stale(worker, self.cluster_sweep) for p, worker in active.items()}
            elapsed = time.perf_counter() - started
            changes: dict[int, Records] = {p: list(r.changelog) for p, r in swept.items()}
            await self._send_and_flush(self.settings.topics.state_changelog, changes)
            for partition, result in swept.items():
                active[partition].commit(result)
        if self.cluster_metrics is not None:
            self.cluster_metrics.observe_sweep(sum(len(r.states) for r in swept.values()), elapsed)

    async def _send_and_flush(self, topic: str, records: dict[int, Records]) -> None:
        """Send each partition's records, then flush once (nothing to send: no flush)."""
        parts = {partition: part for partition, part in records.items() if part}
        for partition, part in parts.items():
            await self.sink.send_many(topic, partition, part)
        if parts:
            await self.sink.flush()

    # --- validation and dead letters -------------------------------------------------------------

    def _parse_plain(self, messages: list[RawMessage]) -> list[tuple[RawMessage, Event | None]]:
        """Each message with its event where it has the usual shape (``parse_plain_event``),
        else None: those go through :meth:`_parse`, which also gives a bad one's reason."""
        limit = time.time() + MAX_FUTURE_S  # not later than any event's own check
        max_bytes, min_ts = self.settings.max_event_bytes, self.settings.min_event_ts
        return [
            (m, None if m.value is None else parse_plain_event(m.value, max_bytes, min_ts, limit))
            for m in messages
        ]

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

    async def _send_changelog(self, applied: Applied) -> Delivery | None:
        """Send a part's changelog records; their delivery."""
        if not applied.changelog:
            return None
        topic, partition = self.settings.topics.state_changelog, applied.worker.partition
        return await self.sink.send_many(topic, partition, applied.changelog)

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
        stamps = np.fromiter((msg.timestamp for msg in messages), np.float64, len(messages))
        m.event_to_state_seconds.observe_many(np.maximum(0.0, time.time() - stamps))
        m.observe_states(result.states.values(), self.partitions.config.state.recent_length)
        if self.cluster_metrics is not None:
            self.cluster_metrics.observe(result.states.values(), self.partitions.embedder)


def _find(messages: list[RawMessage], offset: int) -> RawMessage:
    return next(m for m in messages if m.offset == offset)


def _cover(result: BatchResult, split: Split[RawMessage]) -> None:
    """The batch's offset (and so its marker) covers the events routed now and counts those
    routed before a restart as skipped."""
    if split.through is not None:
        through = split.through
        result.offset = through if result.offset is None else max(result.offset, through)
    result.skipped += split.stale
