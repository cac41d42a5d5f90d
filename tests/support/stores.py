"""State stores for tests: RocksDB with small buffers, or the in-memory store."""

from __future__ import annotations

from pathlib import Path

from feature_store.store import MemoryStore, RocksDBOptions, RocksDBStore, StateStore


def open_store(kind: str, path: Path) -> StateStore:
    if kind == "rocksdb":
        return RocksDBStore(
            path, RocksDBOptions(write_buffer_size=4 << 20, block_cache_size=8 << 20)
        )
    return MemoryStore()
