"""Where the worker's records go: the :class:`Sink` protocol, and :class:`FaustSink` over the
app's own producer.

The ingest and scoring services reach Kafka only through a sink (send, send_many, flush), so the
same code runs under Faust and, with an in-memory sink, in plain asyncio tests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import faust


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
        self,
        topic: str,
        partition: int,
        records: Iterable[tuple[bytes | None, bytes | None]],
        timestamps: Sequence[float] | None = None,
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


class FaustSink:
    """The :class:`Sink` over the app's own producer."""

    def __init__(self, app: faust.App) -> None:
        self.app = app

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Awaitable[Any]:
        return self.app.producer.send(topic, key, value, partition, None, headers)

    async def send_many(
        self,
        topic: str,
        partition: int,
        records: Iterable[tuple[bytes | None, bytes | None]],
        timestamps: Sequence[float] | None = None,
    ) -> Delivery:
        """Records appended straight into aiokafka record batches (C code, no per-message
        future or task): a fraction of :meth:`send`'s per-message cost. Each record stays its
        own Kafka message, keys included, so compaction works as with :meth:`send`.
        ``timestamps`` (seconds, one per record): their Kafka timestamps instead of now."""
        # Faust 0.15 has no public batch API; its aiokafka producer has (create/send_batch)
        producer = self.app.producer._ensure_producer()  # type: ignore[attr-defined]
        futures, last, batch = [], -1, producer.create_batch()
        for i, (key, value) in enumerate(records):
            stamp = None if timestamps is None else round(timestamps[i] * 1000)
            appended = batch.append(key=key, value=value, timestamp=stamp)
            if appended is None:  # full: ship it, start the next one
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                appended = batch.append(key=key, value=value, timestamp=stamp)
            last = appended.offset
        if batch.record_count():
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        return Delivery(futures, last)

    async def flush(self) -> None:
        await self.app.producer.flush()
