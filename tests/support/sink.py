"""An in-memory :class:`streaming.sink.Sink`: what the worker's services would have sent to
Kafka, by topic, with futures that resolve at once to the record's offset."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from streaming.sink import Delivery


@dataclass(frozen=True)
class Record:
    key: bytes | None
    value: bytes | None  # None: a tombstone
    partition: int | None
    headers: dict[str, bytes]
    timestamp: float | None = None  # seconds; None: the time it was sent


class MemorySink:
    """``sent``: the values sent per topic; ``records``: each record in full, per topic."""

    def __init__(self) -> None:
        self.sent: dict[str, list[bytes | None]] = defaultdict(list)
        self.records: dict[str, list[Record]] = defaultdict(list)
        self.flushes = 0

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
        self.records[topic].append(Record(key, value, partition, dict(headers or []), timestamp))
        future = asyncio.get_running_loop().create_future()
        future.set_result(SimpleNamespace(offset=len(self.sent[topic]) - 1))
        return future

    async def send_many(
        self,
        topic: str,
        partition: int,
        records: Iterable[tuple[bytes | None, bytes | None]],
        timestamps: Sequence[float] | None = None,
    ) -> Delivery:
        futures = [
            await self.send(topic, key, value, partition, None, stamp(timestamps, i))
            for i, (key, value) in enumerate(records)
        ]
        return Delivery(futures[-1:], 0)

    async def flush(self) -> None:
        self.flushes += 1


def stamp(timestamps: Sequence[float] | None, i: int) -> float | None:
    return None if timestamps is None else timestamps[i]
