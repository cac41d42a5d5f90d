"""An in-memory :class:`streaming.sink.Sink`: what the worker's services would have sent to
Kafka, by topic, with futures that resolve at once to the record's offset, or fail as a broker's
refusal would (:meth:`MemorySink.refuse`), or wait until released (:meth:`MemorySink.hold`); its
flush settles them as :class:`streaming.sink.FaustSink`'s does."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from streaming.sink import Acknowledgements, Delivery


@dataclass(frozen=True)
class Record:
    key: bytes | None
    value: bytes | None  # None: a tombstone
    partition: int | None
    headers: dict[str, bytes]
    timestamp: float | None = None  # seconds; None: the time it was sent
    flushes_before: int = 0  # the sink's flushes before this record was sent


class MemorySink:
    """``sent``: the values sent per topic; ``records``: each record in full, per topic."""

    def __init__(self) -> None:
        self.sent: dict[str, list[bytes | None]] = defaultdict(list)
        self.records: dict[str, list[Record]] = defaultdict(list)
        self.flushes = 0
        self.owed = Acknowledgements()
        self.refusals: dict[str, list[BaseException]] = defaultdict(list)
        self.held: set[str] = set()  # topics whose acknowledgements wait for :meth:`release`
        self.unacknowledged: dict[str, list[tuple[asyncio.Future[Any], int]]] = defaultdict(list)

    def hold(self, *topics: str) -> None:
        """Records sent to these topics are acknowledged only by :meth:`release` (a broker slow
        to answer)."""
        self.held |= set(topics)

    def release(self, topic: str) -> int:
        """Acknowledge every record of ``topic`` sent so far; how many."""
        waiting, self.unacknowledged[topic] = self.unacknowledged[topic], []
        for future, offset in waiting:
            future.set_result(SimpleNamespace(offset=offset))
        return len(waiting)

    def refuse(self, topic: str, error: BaseException, count: int = 1) -> None:
        """The next ``count`` records sent to ``topic`` are refused with ``error`` (they are
        still recorded: the sink did send them)."""
        self.refusals[topic] += [error] * count

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp: float | None = None,
    ) -> asyncio.Future[Any]:
        self.sent[topic].append(value)
        record = Record(key, value, partition, dict(headers or []), timestamp, self.flushes)
        self.records[topic].append(record)
        future = asyncio.get_running_loop().create_future()
        if self.refusals[topic]:
            future.set_exception(self.refusals[topic].pop(0))
        elif topic in self.held:
            self.unacknowledged[topic].append((future, len(self.sent[topic]) - 1))
        else:
            future.set_result(SimpleNamespace(offset=len(self.sent[topic]) - 1))
        self.owed.owe(topic, partition, future)
        return future

    async def send_many(
        self,
        topic: str,
        partition: int,
        records: Iterable[tuple[bytes | None, bytes | None]],
        timestamps: Sequence[float] | None = None,
    ) -> Delivery:
        futures: list[Awaitable[Any]] = [
            await self.send(topic, key, value, partition, None, stamp(timestamps, i))
            for i, (key, value) in enumerate(records)
        ]
        return Delivery(futures[-1:], 0)

    async def flush(self) -> None:
        self.flushes += 1
        await self.owed.settle()

    def take_owed(self) -> Acknowledgements:
        """As :meth:`flush`, settled later: its settling counts as a flush."""
        owed, self.owed = self.owed, Acknowledgements()
        return _CountedSettle(self, owed)


class _CountedSettle(Acknowledgements):
    """A set taken from a :class:`MemorySink`: settling it counts as one of its flushes."""

    def __init__(self, sink: MemorySink, owed: Acknowledgements) -> None:
        super().__init__()
        self.sink, self._owed = sink, owed._owed

    async def settle(self) -> None:
        self.sink.flushes += 1
        await super().settle()


def stamp(timestamps: Sequence[float] | None, i: int) -> float | None:
    return None if timestamps is None else timestamps[i]
