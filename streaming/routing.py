"""Which partition owns a user, and the copies the worker sends there when a record arrives
elsewhere.

A user's state lives on the partition that the project's producer (kafka-python's default
partitioner: murmur2 of the key, as Java's) gives to the user id as key: :func:`owner_partition`.
A producer with another partitioner (librdkafka's CRC32: kcat, confluent-kafka, Go clients), with
no key or with another user's key puts records elsewhere. The worker that receives such a record
sends a :class:`Copy` to the owner's partition of the same topic, keyed by the body's user and
with the source's timestamp, and waits for the broker before its source offset is committed; a
record on its owner's partition takes no extra hop.

An event's copy carries an event id (:func:`event_copy`): its own, or its source coordinates
``topic/partition/offset``. A crash between sending the copy and committing the source sends it
again with the same id, and the owner's dedupe drops it, as long as fewer than
``dedupe_window`` (1,024) event ids of that user reached it between the two copies.
A score request sent again that way is answered again, as any request after a crash, with the
same request id.

>>> owner_partition("u2", 4), owner_partition("42", 4)
(2, 0)
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Generic, Protocol, TypeVar

import numpy as np
from kafka.partitioner.default import murmur2
from prometheus_client import Counter

from contracts.schema import Event
from serving.requests import BadRequest, parse_request
from streaming.sink import Delivery, Sink


@lru_cache(maxsize=1 << 16)  # a murmur2 in Python per event otherwise; users repeat
def owner_partition(user_id: str, partitions: int) -> int:
    """The partition the project's producer puts a message keyed by ``user_id`` on."""
    return (murmur2(user_id.encode()) & 0x7FFFFFFF) % partitions


_M = np.uint32(0x5BD1E995)  # murmur2's multiplier; uint32 products wrap as Java's ints do


def owner_partitions(user_ids: Sequence[str], partitions: int) -> list[int]:
    """:func:`owner_partition` of each user id, the murmur2s computed in numpy, one pass per key
    length (a murmur2 in Python cost ~1.2 us per event, most of them new users).

    >>> owner_partitions(["u2", "42", "u2"], 4)
    [2, 0, 2]
    """
    keys = [user_id.encode() for user_id in user_ids]
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        by_length[len(key)].append(i)
    owners = np.empty(len(keys), dtype=np.int64)
    for length, rows in by_length.items():
        data = np.frombuffer(b"".join([keys[i] for i in rows]), dtype=np.uint8)
        hashes = _murmur2_rows(data.reshape(len(rows), length))
        owners[rows] = (hashes & np.uint32(0x7FFFFFFF)) % partitions
    return owners.tolist()


def _murmur2_rows(data: np.ndarray) -> np.ndarray:
    """Kafka's murmur2 (seed 0x9747B28C) of each row of ``data`` (uint8, keys of one length)."""
    n, length = data.shape
    h = np.full(n, (0x9747B28C ^ length) & 0xFFFFFFFF, dtype=np.uint32)
    whole = length & ~3
    words = np.ascontiguousarray(data[:, :whole]).view("<u4")
    for j in range(whole // 4):
        k = words[:, j] * _M
        k ^= k >> np.uint32(24)
        h *= _M
        h ^= k * _M
    extra = length & 3
    if extra == 3:
        h ^= data[:, whole + 2].astype(np.uint32) << np.uint32(16)
    if extra >= 2:
        h ^= data[:, whole + 1].astype(np.uint32) << np.uint32(8)
    if extra >= 1:
        h ^= data[:, whole].astype(np.uint32)
        h *= _M
    h ^= h >> np.uint32(13)
    h *= _M
    h ^= h >> np.uint32(15)
    return h


def source_id(topic: str, partition: int, offset: int) -> str:
    """The event id of a routed event that had none: where it was first written.

    >>> source_id("events", 3, 17)
    'events/3/17'
    """
    return f"{topic}/{partition}/{offset}"


def event_copy(event: Event, topic: str, partition: int, offset: int) -> bytes:
    """The routed event's value: the event with its own event id, else its source's.

    >>> from contracts.schema import EventType, parse_event
    >>> e = Event("7", "i1", EventType.CLICK, 1.6e9)
    >>> parse_event(event_copy(e, "events", 1, 5)).event_id
    'events/1/5'
    """
    if event.event_id is None:
        event = dataclasses.replace(event, event_id=source_id(topic, partition, offset))
    return event.to_json()


def request_user(raw: bytes | None) -> str | None:
    """The user of a score request, as the scorer reads it; None when it does not parse.

    >>> request_user(b'{"user_id": 7, "items": [1]}'), request_user(b"{")
    ('7', None)
    """
    try:
        return parse_request(raw or b"").user_id
    except BadRequest:
        return None


@dataclass(frozen=True)
class Copy:
    """One record on its way to the owner's partition."""

    partition: int  # the owner's
    key: bytes  # the body's user
    value: bytes
    timestamp: float  # the source record's, in seconds


class Source(Protocol):
    """A record as an agent received it (:class:`streaming.ingest.RawMessage`)."""

    @property
    def offset(self) -> int: ...

    @property
    def timestamp(self) -> float: ...


S = TypeVar("S", bound=Source)


@dataclass
class Split(Generic[S]):
    """One partition's valid events: those it owns; the sources of the others, with copies of
    those routed now (the rest were routed before a restart: at or below the stored offset);
    the last source offset routed now."""

    own: list[tuple[S, Event]] = field(default_factory=list)
    elsewhere: list[S] = field(default_factory=list)
    copies: list[Copy] = field(default_factory=list)
    through: int | None = None

    @property
    def stale(self) -> int:
        return len(self.elsewhere) - len(self.copies)


@dataclass(frozen=True)
class Routed:
    """The copies in flight."""

    deliveries: list[Delivery]

    async def acknowledged(self) -> None:
        """Once the broker has every copy (raises when one was not delivered)."""
        for delivery in self.deliveries:
            await delivery.last_offset()


class Router:
    """Sends copies to their owners' partitions and counts them (``routed``: one agent's child of
    :attr:`streaming.metrics.IngestMetrics.routed`)."""

    def __init__(self, sink: Sink, partitions: int, routed: Counter) -> None:
        self.sink, self.partitions, self.routed = sink, partitions, routed

    def owner(self, user_id: str) -> int:
        return owner_partition(user_id, self.partitions)

    def split(
        self,
        topic: str,
        partition: int,
        events: Sequence[tuple[S, Event]],
        stored: int | None,
    ) -> Split[S]:
        """Events of ``topic``'s ``partition`` (in offset order) by owner; ``stored``: the
        partition's last committed offset, below which copies were sent before a restart."""
        out: Split[S] = Split()
        owners = owner_partitions([event.user_id for _, event in events], self.partitions)
        for (source, event), owner in zip(events, owners, strict=True):
            if owner == partition:
                out.own.append((source, event))
                continue
            out.elsewhere.append(source)
            if stored is None or source.offset > stored:
                value = event_copy(event, topic, partition, source.offset)
                out.copies.append(Copy(owner, event.key, value, source.timestamp))
                out.through = source.offset
        return out

    async def send(self, topic: str, copies: Sequence[Copy]) -> Routed:
        """Queue the copies, one record batch run per owner partition (not flushed)."""
        by_owner: dict[int, list[Copy]] = defaultdict(list)
        for copy in copies:
            by_owner[copy.partition].append(copy)
        deliveries = [
            await self.sink.send_many(
                topic, partition, [(c.key, c.value) for c in part], [c.timestamp for c in part]
            )
            for partition, part in by_owner.items()
        ]
        self.routed.inc(len(copies))
        return Routed(deliveries)
