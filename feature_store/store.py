"""Where user states live: a small protocol and two backends (RocksDB, memory).

The write path is one atomic batch: the states of the users a batch of events touched, the last
applied Kafka offset of each partition in it, and optional partition metadata (pending impressions,
sampler counts) land together or not at all. After a crash the agent replays from Kafka and skips
every record at or below :meth:`StateStore.last_offset`, so the replay changes nothing;
``write_batch`` refuses offsets that do not move forward (:class:`StaleOffset`) as a safety net,
and raises :class:`StoreWriteError` when RocksDB cannot write a batch (no space left on the
device, an I/O error): then none of it was written. Opening a store that cannot create its files
raises it too. One writer per partition (the Faust worker that owns it).

>>> store = MemoryStore()
>>> from feature_store.state import StateConfig, UserState
>>> store.write_batch({"u1": UserState.empty(StateConfig())}, offsets={0: 41})
>>> store.last_offset(0), store.last_offset(1), list(store.users())
(41, None, ['u1'])
>>> try:
...     store.write_batch({}, offsets={0: 41})
... except StaleOffset as err:
...     print(err)
partition 0: offset 41 <= stored 41
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, cast

import rocksdict

from feature_store.state import UserState
from feature_store.state_layout import Parts, head_key, load_states, state_parts

StateUpdate = UserState | Parts | bytes  # a state, the writes of its changes, an encoded state

USER_PREFIX = b"u/"  # a user's head (feature_store.state_layout); its chunks and clusters apart
OFFSET_PREFIX = b"o/"
META_PREFIX = b"m/"
_OFFSET = struct.Struct(">q")
_PARTITION = struct.Struct(">I")
Compression = Literal["none", "snappy", "lz4", "zstd"]


class StaleOffset(ValueError):
    """A batch whose offset for some partition is not beyond the stored one (a replay)."""


class StoreWriteError(RuntimeError):
    """RocksDB could not write a batch (none of it was written) or open a store (create its
    files): no space left on the device, an I/O error. rocksdict raises a plain ``Exception``
    that only its text tells apart."""


class StateStore(Protocol):
    """Per-user state plus per-partition offsets and metadata, written atomically."""

    def get(self, user: str) -> UserState | None: ...

    def get_many(self, users: list[str]) -> list[UserState | None]: ...

    def write_batch(
        self,
        updates: Mapping[str, StateUpdate],
        offsets: Mapping[int, int],
        meta: Mapping[str, bytes | None] | None = None,
    ) -> None: ...

    def last_offset(self, partition: int) -> int | None: ...

    def get_meta(self, key: str) -> bytes | None: ...

    def meta_items(self, prefix: str) -> Iterator[tuple[str, bytes]]: ...

    def users(self) -> Iterator[str]: ...

    def close(self) -> None: ...


def user_key(user: str) -> bytes:
    return head_key(user)


def offset_key(partition: int) -> bytes:
    return OFFSET_PREFIX + _PARTITION.pack(partition)


def meta_key(key: str) -> bytes:
    return META_PREFIX + key.encode()


def _check_offsets(store: StateStore, offsets: Mapping[int, int]) -> None:
    for partition, offset in offsets.items():
        stored = store.last_offset(partition)
        if stored is not None and offset <= stored:
            raise StaleOffset(f"partition {partition}: offset {offset} <= stored {stored}")


def as_parts(user: str, state: StateUpdate) -> Parts:
    """A state's writes: as given (the worker's, :mod:`feature_store.state_layout`), what
    changed in a state since it was written, or every part of an encoded state."""
    if isinstance(state, Parts):
        return state
    return state_parts(user, UserState.decode(state) if isinstance(state, bytes) else state)


def _records(
    parts: list[Parts],
    offsets: Mapping[int, int],
    meta: Mapping[str, bytes | None] | None,
) -> Iterator[tuple[bytes, bytes | None]]:
    """The key/value pairs of one batch (``None``: delete the key), after its deleted ranges."""
    for part in parts:
        yield from part.records
    for partition, offset in offsets.items():
        yield offset_key(partition), _OFFSET.pack(offset)
    for key, value in (meta or {}).items():
        yield meta_key(key), value


class MemoryStore:
    """A dict-backed :class:`StateStore` (tests, benchmarks, single-process replays)."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}

    def get(self, user: str) -> UserState | None:
        return self.get_many([user])[0]

    def get_many(self, users: list[str]) -> list[UserState | None]:
        return load_states(lambda keys: [self._data.get(k) for k in keys], users)

    def write_batch(
        self,
        updates: Mapping[str, StateUpdate],
        offsets: Mapping[int, int],
        meta: Mapping[str, bytes | None] | None = None,
    ) -> None:
        _check_offsets(self, offsets)
        parts = [as_parts(user, state) for user, state in updates.items()]
        records = list(_records(parts, offsets, meta))  # encode everything before any change
        for begin, end in (r for part in parts for r in part.deleted_ranges):
            for key in [k for k in self._data if begin <= k < end]:
                del self._data[key]
        for key, value in records:
            if value is None:
                self._data.pop(key, None)
            else:
                self._data[key] = value

    def last_offset(self, partition: int) -> int | None:
        blob = self._data.get(offset_key(partition))
        return None if blob is None else int(_OFFSET.unpack(blob)[0])

    def get_meta(self, key: str) -> bytes | None:
        return self._data.get(meta_key(key))

    def meta_items(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        start = meta_key(prefix)
        for key in sorted(k for k in self._data if k.startswith(start)):
            yield key[len(META_PREFIX) :].decode(), self._data[key]

    def users(self) -> Iterator[str]:
        for key in sorted(k for k in self._data if k.startswith(USER_PREFIX)):
            yield key[len(USER_PREFIX) :].decode("utf-8", "surrogatepass")

    def close(self) -> None:
        self._data = {}


@dataclass(frozen=True)
class RocksDBOptions:
    """RocksDB knobs for the state store, converted by :meth:`to_options`."""

    write_buffer_size: int = 64 * 1024 * 1024
    max_write_buffer_number: int = 3
    target_file_size_base: int = 64 * 1024 * 1024
    block_cache_size: int = 128 * 1024 * 1024
    bloom_filter_bits_per_key: int = 10
    compression: Compression = "lz4"
    max_open_files: int | None = None  # None: no limit
    background_jobs: int = 2
    sync_writes: bool = False  # fsync every batch (survives power loss, not only crashes)

    def to_options(self) -> rocksdict.Options:
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_write_buffer_size(self.write_buffer_size)
        opts.set_max_write_buffer_number(self.max_write_buffer_number)
        opts.set_target_file_size_base(self.target_file_size_base)
        opts.set_max_background_jobs(self.background_jobs)
        opts.set_max_open_files(-1 if self.max_open_files is None else self.max_open_files)
        opts.set_compression_type(getattr(rocksdict.DBCompressionType, self.compression)())
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(rocksdict.Cache(self.block_cache_size))
        table.set_bloom_filter(self.bloom_filter_bits_per_key, False)
        opts.set_block_based_table_factory(table)
        return opts

    def to_write_options(self) -> rocksdict.WriteOptions:
        opts = rocksdict.WriteOptions()
        opts.sync = self.sync_writes
        return opts


class RocksDBStore:
    """A :class:`StateStore` in one RocksDB database (rocksdict, raw bytes keys and values)."""

    def __init__(self, path: str | Path, options: RocksDBOptions | None = None) -> None:
        self.options = options or RocksDBOptions()
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
            self._db = rocksdict.Rdict(str(path), options=self.options.to_options())
        except Exception as err:  # e.g. "No space left on device (os error 28)"
            raise StoreWriteError(f"RocksDB could not open {path}: {err}") from err
        self._db.set_write_options(self.options.to_write_options())

    def get(self, user: str) -> UserState | None:
        return self.get_many([user])[0]

    def get_many(self, users: list[str]) -> list[UserState | None]:
        return load_states(self._multi_get, users) if users else []

    def _multi_get(self, keys: list[bytes]) -> list[bytes | None]:
        return cast(list[bytes | None], self._db.get(list[str | int | float | bytes | bool](keys)))

    def write_batch(
        self,
        updates: Mapping[str, StateUpdate],
        offsets: Mapping[int, int],
        meta: Mapping[str, bytes | None] | None = None,
    ) -> None:
        _check_offsets(self, offsets)
        batch = rocksdict.WriteBatch(raw_mode=True)
        parts = [as_parts(user, state) for user, state in updates.items()]
        for begin, end in (r for part in parts for r in part.deleted_ranges):
            batch.delete_range(begin, end)
        for key, value in _records(parts, offsets, meta):
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        try:
            self._db.write(batch)
        except Exception as err:  # e.g. "IO error: No space left on device: While appending ..."
            raise StoreWriteError(f"RocksDB write failed: {err}") from err

    def last_offset(self, partition: int) -> int | None:
        blob = self._db.get(offset_key(partition))
        return None if blob is None else int(_OFFSET.unpack(blob)[0])

    def get_meta(self, key: str) -> bytes | None:
        blob = self._db.get(meta_key(key))
        return None if blob is None else bytes(blob)

    def meta_items(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        start = meta_key(prefix)
        for key, value in self._db.items(from_key=start):
            raw = _raw(key)
            if not raw.startswith(start):
                return
            yield raw[len(META_PREFIX) :].decode(), _raw(value)

    def users(self) -> Iterator[str]:
        for key in self._db.keys(from_key=USER_PREFIX):
            raw = _raw(key)
            if not raw.startswith(USER_PREFIX):
                return
            yield raw[len(USER_PREFIX) :].decode("utf-8", "surrogatepass")

    def close(self) -> None:
        self._db.close()


def _raw(value: object) -> bytes:
    """rocksdict in raw mode returns bytes; make that explicit for the type checker."""
    if not isinstance(value, bytes):
        raise TypeError(f"expected bytes from RocksDB, got {type(value).__name__}")
    return value
