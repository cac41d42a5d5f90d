"""The ingest service behind the Faust agent: validate, dead-letter, apply, emit, commit.

Kafka-facing only through :class:`Sink` (send + flush), so the same code runs under Faust and in
plain asyncio tests. One RocksDB database per owned partition under ``state_dir``; revoked
partitions are closed and deleted, so a user's state lives on exactly one worker, and assigned
ones are caught up from the state changelog first (:mod:`streaming.changelog`).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections import defaultdict
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from contracts.metrics import GroupLag, set_lag
from contracts.schema import Event, InvalidEvent, Reason, parse_event
from contracts.settings import Settings
from feature_store import FeatureConfig, PartitionWorker, RocksDBStore
from feature_store.ingest import BatchResult, MetaChanges
from serving.metrics import ScoringMetrics
from serving.requests import BadRequest, error_response, parse_request, request_id_of
from serving.scorer import ItemCatalog, ModelHolder, Scorer
from streaming.changelog import (
    MARKER_KEY,
    changelog_position_key,
    encode_marker,
    meta_record_key,
    restore_partition,
)
from streaming.metrics import IngestMetrics, count_users, folder_bytes

log = logging.getLogger(__name__)
APP_NAME = "twinstream-ingest"  # streaming.app.create_app's default: the Faust consumer group
MAX_CHANGELOG_VALUE = 8 * 1024 * 1024  # under the changelog's max.message.bytes (16 MiB)
STATE_SIZE_EVERY_S = 30.0  # counting users reads every key: not on every tick


class Sink(Protocol):
    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Awaitable[Any]: ...

    async def send_many(
        self, topic: str, partition: int, records: Iterable[tuple[bytes | None, bytes | None]]
    ) -> Delivery: ...

    async def flush(self) -> None: ...


@dataclass(frozen=True)
class Delivery:
    """What :meth:`Sink.send_many` queued: a future per record batch, and the position of the
    last record within the last batch."""

    batches: list[Awaitable[Any]]
    last_in_batch: int

    async def last_offset(self) -> int:
        """Once the broker has acknowledged every batch: the offset of the last record."""
        acked = [await batch for batch in self.batches]
        return int(acked[-1].offset) + self.last_in_batch


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
        state_dir: str | Path,
        metrics: IngestMetrics | None = None,
        config: FeatureConfig | None = None,
        scoring_metrics: ScoringMetrics | None = None,
    ) -> None:
        self.settings, self.sink = settings, sink
        self.state_dir = Path(state_dir)
        self.metrics = metrics or IngestMetrics.create()
        self.config = config or FeatureConfig.from_settings(settings)
        self.workers: dict[int, PartitionWorker] = {}
        self.holder = ModelHolder()
        self.catalog = ItemCatalog()
        self.scoring_metrics = scoring_metrics or ScoringMetrics.create(self.metrics.registry)
        drift = self.scoring_metrics.drift
        self.scorer = Scorer(self.holder, self.catalog, self.config.state, drift)
        self.lag = GroupLag(settings.bootstrap_servers, f"{settings.topics.prefix}{APP_NAME}")
        self._lock = asyncio.Lock()
        self._paused: set[int] = set()
        self._state_sampled = -STATE_SIZE_EVERY_S  # monotonic time of the last users count

    # --- partition ownership ---------------------------------------------------------------------

    def _path(self, partition: int) -> Path:
        """Per events topic: offsets stored for one topic must never gate another's events."""
        return self.state_dir / self.settings.topics.events / f"p{partition}.rocksdb"

    async def pause(self, partitions: Iterable[int]) -> None:
        """Stop applying these partitions (a rebalance began); waits for the batch in flight."""
        async with self._lock:
            self._paused |= set(partitions)

    async def own(self, partitions: Iterable[int]) -> None:
        """The new assignment: drop what we lost (state deleted), catch up what we gained."""
        wanted = set(partitions)
        async with self._lock:
            for p in set(self.workers) - wanted:
                self.workers.pop(p).store.close()
                shutil.rmtree(self._path(p), ignore_errors=True)
            for p in sorted(wanted - set(self.workers)):
                store = RocksDBStore(self._path(p))
                await asyncio.to_thread(restore_partition, self.settings, store, p)
                self.workers[p] = PartitionWorker(store, p, self.config)
            self._paused -= wanted
            self.metrics.assigned_partitions.set(len(self.workers))

    async def close(self) -> None:
        async with self._lock:
            for worker in self.workers.values():
                worker.store.close()
            self.workers.clear()
        self.lag.close()

    # --- the batch path --------------------------------------------------------------------------

    async def handle(self, messages: Sequence[RawMessage]) -> None:
        """Apply one batch: every owned partition's part is processed and its samples and
        changelog records sent, then one flush covers them all before the local commits."""
        started = time.perf_counter()
        async with self._lock:
            by_partition: dict[int, list[RawMessage]] = defaultdict(list)
            for m in messages:
                # events of a partition in hand-over are left to its next owner (not acked by us)
                if m.partition in self.workers and m.partition not in self._paused:
                    by_partition[m.partition].append(m)
            sent = [
                await self._partition_batch(self.workers[partition], part)
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
        """Validate, apply in memory, send samples, dead letters and changelog records (not
        flushed); the changelog marker's delivery is returned for the commit to wait on."""
        records: list[tuple[int, Event]] = []
        for m in messages:
            try:
                event = self._parse(m)
            except InvalidEvent as err:
                await self._dead_letter(m, err)
                continue
            records.append((m.offset, event))
            self.catalog.learn(event.item_id, event.category_id)
        result = worker.process(records)
        for offset, late in result.rejected:
            await self._dead_letter(_find(messages, offset), late)
        await self._emit(worker.partition, result)
        return worker, result, await self._changelog(worker.partition, result), messages

    def answer(self, raw: bytes | None, partition: int | None, transport: str) -> dict[str, Any]:
        """Answer one score request from the owner's local state (never raises)."""
        started = time.perf_counter()
        try:
            req = parse_request(raw or b"")
        except BadRequest as err:
            self.scoring_metrics.requests.labels(transport=transport, outcome=err.code).inc()
            return error_response(request_id_of(raw or b""), err.code, err.detail)
        worker = self.workers.get(partition) if partition is not None else None
        state = None if worker is None else worker.store.get(req.user_id)
        answer = self.scorer.score(req, state)
        outcome = answer["error"]["code"] if "error" in answer else "ok"
        self.scoring_metrics.requests.labels(transport=transport, outcome=outcome).inc()
        self.scoring_metrics.latency.labels(transport=transport).observe(
            time.perf_counter() - started
        )
        if req.sent_at is not None:
            self.scoring_metrics.request_to_answer.observe(max(0.0, time.time() - req.sent_at))
        return answer

    async def tick(self) -> None:
        """Close expired attribution windows (explicit mode) and send their label-0 samples."""
        async with self._lock:
            for partition, worker in self.workers.items():
                if partition in self._paused:
                    continue
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
        await self.sample_gauges()

    async def sample_gauges(self) -> None:
        """Consumer lag of both agents on the owned partitions; users and bytes of the state
        every ``STATE_SIZE_EVERY_S``. Monitoring failures are logged, never raised."""
        topics = {
            "ingest": self.settings.topics.events,
            "score": self.settings.topics.score_requests,
        }
        owned = sorted(set(self.workers) - self._paused)
        try:
            set_lag(
                self.metrics.consumer_lag, await asyncio.to_thread(self.lag.sample, topics, owned)
            )
        except Exception as err:  # kafka-python raises many types; lag is best effort
            log.warning("consumer lag not sampled: %r", err)
        if time.monotonic() - self._state_sampled < STATE_SIZE_EVERY_S:
            return
        self._state_sampled = time.monotonic()
        async with self._lock:  # own() must not close a store while it is counted
            stores = [w.store for w in self.workers.values()]
            self.metrics.users.set(await asyncio.to_thread(count_users, stores))
        self.metrics.state_bytes.set(await asyncio.to_thread(folder_bytes, self.state_dir))

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
        """Metadata changes as changelog records; one too large for a Kafka message (a sampler
        over millions of items) stays local and is logged: a new owner rebuilds it."""
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
        m.observe_states(result.states.values(), self.config.state.recent_length)


def _find(messages: list[RawMessage], offset: int) -> RawMessage:
    return next(m for m in messages if m.offset == offset)
