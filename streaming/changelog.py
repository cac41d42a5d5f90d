"""The state changelog: how a partition's user state moves between workers and survives a disk.

Topic ``user-state-changelog`` is compacted and co-partitioned with ``events``. After each ingest
batch the owner writes every changed user's state as a delta, or now and then a checkpoint
(:mod:`feature_store.state_delta`: a delta is about 100 bytes per event whatever the history; a
checkpoint, key = user id, comes once the deltas since the last one outweigh the state, with
tombstones for those deltas, so restoring a user reads at most about twice its state), and one
offset marker
(key = empty bytes, value = the last applied ``events`` offset) to the same partition number, with
the partition's metadata changes (pending explicit-mode impressions, the negative sampler's
per-batch delta or checkpoint parts, :mod:`feature_store.sampler_journal`; key = ``META_PREFIX`` +
name, a tombstone when deleted), and waits for the broker before committing its local RocksDB.
The changelog is therefore never behind the local store; a worker that is assigned a partition
replays the changelog from where its local store left off (or from the start on a new machine),
sampler included, and then resumes from the committed consumer offset, skipping events at or
below the marker.
"""

from __future__ import annotations

import logging
import struct

from kafka import KafkaConsumer, TopicPartition

from contracts.settings import Settings
from feature_store import StateStore, UserState
from feature_store.ingest import BatchResult, MetaChanges
from feature_store.state_delta import DELTA_PREFIX, apply_record, decode_checkpoint, record_user

log = logging.getLogger(__name__)
MAX_CHANGELOG_VALUE = 8 * 1024 * 1024  # under the changelog's max.message.bytes (16 MiB)
Records = list[tuple[bytes | None, bytes | None]]  # (key, value) pairs for one partition
MARKER_KEY = b""
META_PREFIX = b"\xff"  # never the first byte of UTF-8 text, so never a user id's key
_OFFSET = struct.Struct(">q")


def meta_record_key(key: str) -> bytes:
    """The changelog key of a partition metadata entry (pending impressions, sampler)."""
    return META_PREFIX + key.encode()


def changelog_records(result: BatchResult) -> Records:
    """A batch's changelog records: the touched states, the metadata changes, then the offset
    marker (none without an offset: nothing of the partition was applied)."""
    if result.offset is None:
        return []
    records: Records = list(result.changelog)
    records += meta_records(result.meta)
    records.append((MARKER_KEY, encode_marker(result.offset)))
    return records


def meta_records(meta: MetaChanges) -> Records:
    """Metadata changes as changelog records. The sampler's come in parts of at most 1 MiB
    (:mod:`feature_store.sampler_journal`); any record still too large for a Kafka message
    stays local and is logged with its size."""
    out: Records = []
    for key, value in meta.items():
        if value is not None and len(value) > MAX_CHANGELOG_VALUE:
            log.warning("%s (%d bytes) is not in the changelog: too large", key, len(value))
            continue
        out.append((meta_record_key(key), value))
    return out


def changelog_position_key(partition: int) -> str:
    return f"changelog/{partition}"


def encode_marker(offset: int) -> bytes:
    return _OFFSET.pack(offset)


def stored_position(store: StateStore, partition: int) -> int:
    blob = store.get_meta(changelog_position_key(partition))
    return 0 if blob is None else _OFFSET.unpack(blob)[0]


def restore_partition(
    settings: Settings, store: StateStore, partition: int, chunk: int = 5_000
) -> int:
    """Apply changelog records past the store's position; returns how many were read."""
    tp = TopicPartition(settings.topics.state_changelog, partition)
    consumer = KafkaConsumer(
        **settings.kafka_config(),
        enable_auto_commit=False,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    try:
        consumer.assign([tp])
        start, end = stored_position(store, partition), consumer.end_offsets([tp])[tp]
        if start >= end:
            return 0
        consumer.seek(tp, start)
        return _replay(consumer, tp, store, end, chunk)
    finally:
        consumer.close()


def _replay(
    consumer: KafkaConsumer, tp: TopicPartition, store: StateStore, end: int, chunk: int
) -> int:
    replay = StateReplay(store)
    meta: dict[str, bytes | None] = {}
    marker: int | None = None
    read = 0
    while consumer.position(tp) < end:
        for record in consumer.poll(timeout_ms=1000).get(tp, []):
            if record.offset >= end:
                break
            read += 1
            if record.key == MARKER_KEY:
                marker = _OFFSET.unpack(record.value)[0]
            elif record.key.startswith(META_PREFIX):  # a value of None deletes the entry
                meta[record.key[len(META_PREFIX) :].decode()] = record.value
            else:
                replay.apply(record.key, record.value)
        if len(replay.states) + len(meta) >= chunk or consumer.position(tp) >= end:
            _write(store, tp.partition, replay.take(), meta, marker, consumer.position(tp))
            meta, marker = {}, None
    if replay.skipped:
        what = "state deltas that follow no state read"
        log.warning("partition %d: %d %s", tp.partition, replay.skipped, what)
    return read


class StateReplay:
    """User states rebuilt from changelog records (:mod:`feature_store.state_delta`): a
    checkpoint replaces the user's state, a delta changes the state it follows (the one read
    so far, else the store's), a tombstone of a delta changes nothing."""

    def __init__(self, store: StateStore | None = None) -> None:
        self.store = store
        self.states: dict[str, UserState] = {}
        self.skipped = 0  # deltas that followed no state we have (compaction left them behind)

    def apply(self, key: bytes, value: bytes | None) -> None:
        user = record_user(key)
        if not key.startswith(DELTA_PREFIX):
            if value is not None:
                self.states[user] = decode_checkpoint(value)
            return
        if value is None:
            return
        state = self.states.get(user)
        if state is None and self.store is not None:
            state = self.store.get(user)
        if apply_record(state, key, value):
            self.states[user] = state  # type: ignore[assignment]
        else:
            self.skipped += 1

    def take(self) -> dict[str, UserState]:
        """The states changed since the last take (written, then forgotten here)."""
        states, self.states = self.states, {}
        return states


def _write(
    store: StateStore,
    partition: int,
    states: dict[str, UserState],
    meta: dict[str, bytes | None],
    marker: int | None,
    pos: int,
) -> None:
    last = store.last_offset(partition)
    offsets = {} if marker is None or (last is not None and marker <= last) else {partition: marker}
    store.write_batch(
        states, offsets, meta | {changelog_position_key(partition): _OFFSET.pack(pos)}
    )
