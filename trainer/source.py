"""Where the online trainer's sample messages come from: a :class:`SampleSource`.

The trainer asks its source for batches of sample messages, each with its partition, offset and
timestamp (:class:`SampleRecord`), and tells it where to resume: the last offset consumed of each
partition, which the trainer keeps in its snapshots. It never sees a consumer.

- :class:`KafkaSampleSource` reads the ``samples`` topic: one consumer, assigned its partitions by
  the consumer group ``{prefix}trainer`` (or, under ``torchrun``, the partitions
  p % world_size == rank, no group); each partition assigned is sought to the trainer's offset + 1
  (its beginning when the trainer has none). Offsets are committed to the group after each
  snapshot, for lag monitoring only: they are never read back.
- :class:`MemorySampleSource` hands out a list of messages (tests, notebooks):

>>> source = MemorySampleSource([SampleMessage(0, 0, 1000, b"a"), SampleMessage(0, 1, 1001, b"b"),
...                              SampleMessage(1, 0, 1002, b"c")])
>>> source.start(consumed=lambda: {0: 0})  # partition 0 resumes after offset 0
>>> [m.value for m in source.next_batch(2, max_wait_s=0.01, stopping=lambda: False)]
[b'b', b'c']
>>> source.next_batch(2, max_wait_s=0.01, stopping=lambda: False)
[]
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from kafka import ConsumerRebalanceListener, KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka.record import util as kafka_record_util

from contracts.settings import Settings
from trainer.config import TrainerConfig
from trainer.distributed import assigned_partitions
from trainer.lag import LagWatcher, TopicOffsets
from trainer.telemetry import TrainerTelemetry

log = logging.getLogger("twinstream.trainer")
# Per-partition fetch size. A backlog is read one fetch of each partition after another, so this
# bounds how far one partition runs ahead of the others (16 MiB: whole partitions one after
# another). 1 MiB (Kafka's default) interleaves every ~100-300 samples; 64 KiB interleaves finer
# but cost 30% of the throughput in round trips (DARE dim 32, Taobao users: 2,658 vs 3,764 rows/s).
PARTITION_FETCH_BYTES = 1024 * 1024
# kafka-python checks record CRCs in pure Python unless the ``crc32c`` C extension is installed:
# 6.2 s of a 26 s run over 85 MB of samples (same run). Without it the trainer relies on the
# broker's CRC check on produce and on the sample decoder's framing checks.
FAST_CRC = kafka_record_util.crc32c_c is not None

Consumed = Callable[[], Mapping[int, int]]  # partition → last offset consumed, asked when needed


class SampleRecord(Protocol):
    """One sample message (a Kafka ``ConsumerRecord`` is one)."""

    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...  # milliseconds since the epoch
    @property
    def value(self) -> bytes | None: ...


class SampleSource(Protocol):
    """Batches of sample messages for the online trainer, resumed where the trainer says."""

    def start(self, consumed: Consumed) -> None:
        """Connect; each partition resumes after ``consumed()[partition]`` (else its start)."""

    def next_batch(
        self, max_messages: int, max_wait_s: float, stopping: Callable[[], bool]
    ) -> Sequence[SampleRecord]:
        """Up to ``max_messages``, waiting at most ``max_wait_s`` to fill them, less once
        ``stopping()``; empty when nothing came."""
        ...

    def assigned(self) -> bool:
        """Whether partitions are assigned yet (a consumer group's first join takes a while)."""
        ...

    def sample_lag(self, telemetry: TrainerTelemetry) -> None:
        """Report how far behind the end of each partition the source is, if it knows."""

    def snapshot_written(self, offsets: Mapping[int, int]) -> None:
        """A snapshot now holds everything up to ``offsets`` (partition → last offset)."""

    def close(self) -> None: ...


class SampleMessage(NamedTuple):
    """A sample message held in memory."""

    partition: int
    offset: int
    timestamp: int  # milliseconds since the epoch
    value: bytes | None


class MemorySampleSource:
    """A list of sample messages, handed out in order; one process, no group, no lag."""

    def __init__(self, messages: Iterable[SampleMessage]) -> None:
        self.messages = list(messages)
        self._pending: deque[SampleMessage] = deque()

    @classmethod
    def from_partitions(
        cls, per_partition: Mapping[int, Sequence[bytes]], timestamp_ms: int | None = None
    ) -> MemorySampleSource:
        """Each partition's messages at offsets 0, 1, ..., the partitions one after another."""
        ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        return cls(
            SampleMessage(p, offset, ts, blob)
            for p in sorted(per_partition)
            for offset, blob in enumerate(per_partition[p])
        )

    def start(self, consumed: Consumed) -> None:
        done = consumed()
        self._pending = deque(m for m in self.messages if m.offset > done.get(m.partition, -1))

    def next_batch(
        self, max_messages: int, max_wait_s: float, stopping: Callable[[], bool]
    ) -> list[SampleMessage]:
        if stopping():
            return []
        if not self._pending:  # as a consumer would: wait for more, which never comes
            time.sleep(max_wait_s)
        return [self._pending.popleft() for _ in range(min(max_messages, len(self._pending)))]

    def assigned(self) -> bool:
        return True

    def sample_lag(self, telemetry: TrainerTelemetry) -> None:
        return None

    def snapshot_written(self, offsets: Mapping[int, int]) -> None:
        return None

    def close(self) -> None:
        return None


class KafkaSampleSource:
    """The ``samples`` topic through one kafka-python consumer; see the module docstring."""

    def __init__(
        self, settings: Settings, config: TrainerConfig, rank: int = 0, world_size: int = 1
    ) -> None:
        self.settings, self.config = settings, config
        self.rank, self.world_size = rank, world_size
        self.topic = settings.topics.samples
        self._consumer: KafkaConsumer | None = None
        self._consumed: Consumed = lambda: {}
        self._offsets = TopicOffsets(settings.kafka_config(), self.topic)
        self._lag: LagWatcher | None = None

    @property
    def consumer(self) -> KafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("KafkaSampleSource.start() was not called")
        return self._consumer

    def start(self, consumed: Consumed) -> None:
        self._consumed = consumed
        self._consumer = self._connect()

    def next_batch(
        self, max_messages: int, max_wait_s: float, stopping: Callable[[], bool]
    ) -> list[SampleRecord]:
        records: list[SampleRecord] = []
        deadline = time.monotonic() + max_wait_s
        while len(records) < max_messages and not stopping():
            wait_ms = int(max(0.0, deadline - time.monotonic()) * 1000)
            want = max_messages - len(records)
            for part in self.consumer.poll(timeout_ms=max(wait_ms, 1), max_records=want).values():
                records.extend(part)
            if time.monotonic() >= deadline:
                break
        return records

    def assigned(self) -> bool:
        return bool(self.consumer.assignment())

    def sample_lag(self, telemetry: TrainerTelemetry) -> None:
        """Hand the lag watcher (its own thread and client) the partitions assigned and the
        last offset consumed of each: nothing here waits for the broker."""
        if self._lag is None:
            self._lag = LagWatcher(self._offsets, telemetry.record_lag)
            self._lag.start()
        consumed = self._consumed()
        mine = [tp.partition for tp in self.consumer.assignment()]
        self._lag.seen({p: consumed.get(p) for p in mine})

    def snapshot_written(self, offsets: Mapping[int, int]) -> None:
        """Commit the snapshot's offsets to the group, for lag monitoring only (never read)."""
        consumer = self.consumer
        if consumer.config.get("group_id") is None:
            return
        mine = {tp.partition for tp in consumer.assignment()}
        commits = {
            TopicPartition(self.topic, p): OffsetAndMetadata(o + 1, "", -1)
            for p, o in offsets.items()
            if p in mine
        }
        # asynchronous: a commit waits for the group's coordinator, which a broker failure can
        # keep away for a request timeout (30 s); training must not wait for monitoring
        try:
            consumer.commit_async(commits, callback=_commit_done)
        except Exception as err:  # a rebalance in progress: the next snapshot commits again
            log.debug("lag commit skipped: %r", err)

    def close(self) -> None:
        if self._lag is not None:
            self._lag.close()
        self._offsets.close()
        if self._consumer is not None:
            self._consumer.close()

    def seek(self, tps: Sequence[TopicPartition]) -> None:
        """Each partition to its last consumed offset + 1, or its beginning."""
        consumed = self._consumed()
        for tp in tps:
            if tp.partition in consumed:
                self.consumer.seek(tp, consumed[tp.partition] + 1)
            else:
                self.consumer.seek_to_beginning(tp)

    def _connect(self) -> KafkaConsumer:
        cfg, s = self.config, self.settings
        common: dict[str, Any] = {
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_partition_fetch_bytes": PARTITION_FETCH_BYTES,
            "fetch_max_bytes": 64 * 1024 * 1024,
            "check_crcs": FAST_CRC,
        }
        if self.world_size > 1:
            self._consumer = KafkaConsumer(**s.kafka_config(), **common)
            self._assign()
            return self._consumer
        session_ms = int(cfg.session_timeout_s * 1000)
        self._consumer = KafkaConsumer(
            **s.kafka_config(),
            group_id=cfg.group_id or f"{s.topics.prefix}trainer",
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(1000, session_ms // 3),
            **common,
        )
        # Join with the topic's metadata known: a first join without it assigns nothing and a
        # second rebalance follows at once, where kafka-python 3.0.12 can stall (never synced).
        self._partitions()
        self._consumer.subscribe([self.topic], listener=_SeekOnAssign(self))
        return self._consumer

    def _partitions(self, timeout_s: float = 60.0) -> list[int]:
        """The partitions of ``samples``, waiting for the topic to exist."""
        deadline = time.monotonic() + timeout_s
        while not (partitions := self.consumer.partitions_for_topic(self.topic)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {self.topic!r} has no partitions after {timeout_s}s")
            time.sleep(0.2)
        return sorted(partitions)

    def _assign(self) -> None:
        """Distributed: this rank's partitions, no group; seek past the trainer's offsets."""
        mine = assigned_partitions(self._partitions(), self.rank, self.world_size)
        tps = [TopicPartition(self.topic, p) for p in mine]
        self.consumer.assign(tps)
        self.seek(tps)
        log.info("rank %d reads partitions %s", self.rank, mine)


def _commit_done(offsets: object, response: object) -> None:
    if isinstance(response, Exception):  # the next snapshot commits again
        log.debug("lag commit failed: %r", response)


class _SeekOnAssign(ConsumerRebalanceListener):
    """Consumer-group assignment: position each new partition from the trainer's offsets."""

    def __init__(self, source: KafkaSampleSource) -> None:
        self.source = source

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        return None

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.source.seek(list(assigned))
        log.info("assigned %s", sorted(tp.partition for tp in assigned))
