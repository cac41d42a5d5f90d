"""Where the worker's records go: the :class:`Sink` protocol, :class:`FaustSink` over the app's
own producer, and :class:`BestEffortSink` for answers nobody waits on.

The ingest and scoring services reach Kafka only through a sink (send, send_many, flush,
take_owed), so the
same code runs under Faust and, with an in-memory sink, in plain asyncio tests.

A :class:`FaustSink` owes an acknowledgement for every record sent through it
(:class:`Acknowledgements`): :meth:`FaustSink.flush` returns once the broker has acknowledged
every one sent since the last flush, and raises :class:`DeliveryFailed` when it refused one (after
the producer's own retries), so whoever flushes before committing commits nothing the broker does
not hold. It waits for its own records only: another sink's on the same producer never hold it up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import faust
from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)


class Sink(Protocol):
    async def send(
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

    def take_owed(self) -> Acknowledgements: ...


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


class DeliveryFailed(KafkaError):
    """The broker did not acknowledge a record (its error is the cause): a Kafka fault.

    >>> str(DeliveryFailed("samples", 3, ValueError("refused")))
    'DeliveryFailed: a record for samples/3 was not delivered: refused'
    """

    def __init__(self, topic: str, partition: int | None, error: BaseException) -> None:
        where = topic if partition is None else f"{topic}/{partition}"
        reason = str(error) or type(error).__name__
        super().__init__(f"a record for {where} was not delivered: {reason}")
        self.topic, self.partition = topic, partition


class Acknowledgements:
    """The broker's acknowledgements still owed: a future per record batch (or single record)
    sent since the last :meth:`settle`, with where it went."""

    def __init__(self) -> None:
        self._owed: list[tuple[str, int | None, asyncio.Future[Any]]] = []

    def __len__(self) -> int:
        return len(self._owed)

    def owe(self, topic: str, partition: int | None, future: asyncio.Future[Any]) -> None:
        self._owed.append((topic, partition, future))

    async def settle(self) -> None:
        """Wait for every acknowledgement owed (together, not one by one); then raise
        :class:`DeliveryFailed` for the first record, in send order, that was refused.

        >>> async def demo() -> str:
        ...     acks, loop = Acknowledgements(), asyncio.get_running_loop()
        ...     good, bad = loop.create_future(), loop.create_future()
        ...     good.set_result(None); bad.set_exception(ValueError("too large"))
        ...     acks.owe("samples", 0, good); acks.owe("samples", 1, bad)
        ...     try:
        ...         await acks.settle()
        ...     except DeliveryFailed as failed:
        ...         return f"{failed.topic}/{failed.partition}: {failed.__cause__}"
        ...     return "acknowledged"
        >>> asyncio.run(demo())
        'samples/1: too large'
        """
        owed, self._owed = self._owed, []
        if owed:
            await asyncio.wait([future for _, _, future in owed])
        failures = [(t, p, _error(f)) for t, p, f in owed]  # every error read: none left unseen
        for topic, partition, error in failures:
            if error is not None:
                raise DeliveryFailed(topic, partition, error) from error


def _error(future: asyncio.Future[Any]) -> BaseException | None:
    return asyncio.CancelledError("cancelled") if future.cancelled() else future.exception()


class FaustSink:
    """The :class:`Sink` over the app's own producer; :meth:`flush` settles what it sent."""

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self.owed = Acknowledgements()

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        """Queue one record; its acknowledgement (a future of its metadata)."""
        sent = await self.app.producer.send(topic, key, value, partition, None, headers)
        future = asyncio.ensure_future(sent)  # aiokafka's future itself, typed as an awaitable
        self._owe(topic, partition, future)
        return future

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
        for future in futures:
            self._owe(topic, partition, future)
        return Delivery(futures, last)

    async def flush(self) -> None:
        """Once the broker has acknowledged every record sent through this sink since the last
        flush; raises :class:`DeliveryFailed` if it refused one. The producer's other records
        (another sink's) are not waited for: aiokafka sends without a flush, which only waits."""
        await self.owed.settle()

    def take_owed(self) -> Acknowledgements:
        """The acknowledgements owed for what was sent since the last flush or take, to settle
        later; what is sent from now on owes a new set (a batch in flight settles its own
        records, not the next batch's)."""
        owed, self.owed = self.owed, Acknowledgements()
        return owed

    def _owe(self, topic: str, partition: int | None, future: asyncio.Future[Any]) -> None:
        self.owed.owe(topic, partition, future)


class BestEffortSink(FaustSink):
    """A :class:`FaustSink` that owes nothing: a record the broker refuses is logged (a warning
    naming the topic and the error) and dropped, and :meth:`flush` returns at once. For records
    whose loss costs a retry, not data (answers to score requests)."""

    async def flush(self) -> None:
        return None

    def _owe(self, topic: str, partition: int | None, future: asyncio.Future[Any]) -> None:
        future.add_done_callback(lambda done: _warn_if_refused(topic, partition, done))


def _warn_if_refused(topic: str, partition: int | None, future: asyncio.Future[Any]) -> None:
    error = _error(future)
    if error is not None:
        log.warning("%s (best effort: not retried)", DeliveryFailed(topic, partition, error))
