"""StateStore contract, run over RocksDB and memory: reads, atomic batches, offsets, metadata."""

from __future__ import annotations

from pathlib import Path

import pytest

from feature_store.state import StateConfig, UserState
from feature_store.store import (
    RocksDBOptions,
    RocksDBStore,
    StaleOffset,
    StateStore,
    StoreWriteError,
)
from tests.support.events import event
from tests.support.stores import filling_store

CFG = StateConfig()


def state_with(*items: str) -> UserState:
    s = UserState.empty(CFG)
    for i, item in enumerate(items):
        s.apply(event(float(i), item=item), CFG)
    return s


def test_get_returns_what_was_written(store: StateStore) -> None:
    assert store.get("u1") is None
    store.write_batch({"u1": state_with("1", "2"), "ü/2": state_with("3")}, {0: 10})
    got = store.get("u1")
    assert got is not None and got.log["item"].tolist() == [1, 2]
    assert [s and s.total for s in store.get_many(["ü/2", "nobody", "u1"])] == [1, None, 2]
    assert store.get_many([]) == []
    assert sorted(store.users()) == ["u1", "ü/2"]


def test_reads_are_isolated_from_later_mutation(store: StateStore) -> None:
    store.write_batch({"u1": state_with("1")}, {})
    got = store.get("u1")
    assert got is not None
    got.apply(event(5.0, item="9"), CFG)  # not written back
    again = store.get("u1")
    assert again is not None and again.log["item"].tolist() == [1]


def test_offsets_per_partition(store: StateStore) -> None:
    assert store.last_offset(0) is None
    store.write_batch({}, {0: 5, 3: 7})
    store.write_batch({}, {0: 6})
    assert (store.last_offset(0), store.last_offset(3), store.last_offset(1)) == (6, 7, None)


def test_replayed_batch_is_refused_and_changes_nothing(store: StateStore) -> None:
    """Applying the same batch twice: the offset guard refuses the second, the state is intact."""
    store.write_batch({"u1": state_with("1")}, {0: 5})
    snapshot = store.get("u1")
    assert snapshot is not None
    with pytest.raises(StaleOffset):
        store.write_batch({"u1": state_with("1", "1"), "u2": state_with("2")}, {0: 5}, {"k": b"v"})
    got = store.get("u1")
    assert got is not None and got.encode() == snapshot.encode()
    assert store.get("u2") is None and store.get_meta("k") is None and store.last_offset(0) == 5


def test_a_batch_with_one_stale_partition_writes_nothing(store: StateStore) -> None:
    store.write_batch({}, {0: 5, 1: 5})
    with pytest.raises(StaleOffset):
        store.write_batch({"u1": state_with("1")}, {0: 9, 1: 4})
    assert store.get("u1") is None and store.last_offset(0) == 5


def test_meta_put_delete_and_prefix_scan(store: StateStore) -> None:
    store.write_batch({}, {}, {"pending/0/a": b"1", "pending/0/b": b"2", "pending/1/a": b"3"})
    store.write_batch({}, {}, {"pending/0/a": None, "sampler/0": b"s"})
    assert list(store.meta_items("pending/0/")) == [("pending/0/b", b"2")]
    assert store.get_meta("sampler/0") == b"s" and store.get_meta("pending/0/a") is None
    assert list(store.users()) == []


def test_rocksdb_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "db"
    first = RocksDBStore(path, RocksDBOptions(compression="none", sync_writes=True))
    first.write_batch({"u1": state_with("4", "5")}, {2: 99}, {"m": b"x"})
    first.close()
    second = RocksDBStore(path)
    got = second.get("u1")
    assert got is not None and got.log["item"].tolist() == [4, 5]
    assert second.last_offset(2) == 99 and second.get_meta("m") == b"x"
    second.close()


def test_rocksdb_that_cannot_write_says_so_and_writes_nothing(tmp_path: Path) -> None:
    store = filling_store(tmp_path / "db", room=1)
    store.write_batch({"u1": state_with("4")}, {0: 1})
    with pytest.raises(StoreWriteError, match="No space left on device"):
        store.write_batch({"u1": state_with("4", "5")}, {0: 2})
    got = store.get("u1")
    assert got is not None and got.log["item"].tolist() == [4] and store.last_offset(0) == 1
    store.close()
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(StoreWriteError, match="could not open"):
        RocksDBStore(tmp_path / "file" / "db")


def test_rocksdb_options_convert() -> None:
    opts = RocksDBOptions(max_open_files=64, compression="zstd")
    assert opts.to_options() is not None and opts.to_write_options().sync is False
    with pytest.raises(AttributeError):
        opts.compression = "lz4"  # type: ignore[misc]
