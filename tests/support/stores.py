"""State stores for tests: RocksDB with small buffers, or the in-memory store; and a RocksDB
store whose disk fills up after a given number of write batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from feature_store.store import MemoryStore, RocksDBOptions, RocksDBStore, StateStore

ENOSPC = (  # what rocksdict says when RocksDB cannot append to its write-ahead log
    "IO error: No space left on device: While appending to file: 000004.log: "
    "No space left on device"
)


def open_store(kind: str, path: Path) -> StateStore:
    if kind == "rocksdb":
        return RocksDBStore(
            path, RocksDBOptions(write_buffer_size=4 << 20, block_cache_size=8 << 20)
        )
    return MemoryStore()


class DiskFillsUp:
    """A rocksdict ``Rdict`` whose disk has room for ``room`` more write batches; every write
    after those raises the plain ``Exception`` rocksdict raises on ENOSPC."""

    def __init__(self, db: Any, room: int) -> None:
        self.db, self.room = db, room

    def write(self, batch: Any) -> None:
        if self.room == 0:
            raise Exception(ENOSPC)  # rocksdict's type: a plain Exception
        self.room -= 1
        self.db.write(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def filling_store(path: Path, room: int) -> RocksDBStore:
    """A real :class:`RocksDBStore` at ``path`` that takes ``room`` write batches, then fails."""
    store = RocksDBStore(path)
    store._db = DiskFillsUp(store._db, room)  # type: ignore[assignment]
    return store
