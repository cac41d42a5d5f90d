"""Fixtures for the feature store: one parametrised store fixture (RocksDB and memory), events."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts.schema import Event, EventType
from feature_store.store import MemoryStore, RocksDBOptions, RocksDBStore, StateStore

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
T0 = 1_511_539_200.0  # 2017-11-24, inside the Taobao log's range


def shared_data(*parts: str) -> Path:
    """A file under ../shared/data, or skip with a clear message when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (tests read ../shared/data)")
    return path


def open_store(kind: str, path: Path) -> StateStore:
    if kind == "rocksdb":
        return RocksDBStore(
            path, RocksDBOptions(write_buffer_size=4 << 20, block_cache_size=8 << 20)
        )
    return MemoryStore()


@pytest.fixture(params=["rocksdb", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    s = open_store(request.param, tmp_path / "state")
    yield s
    s.close()


def event(
    ts: float,
    item: str = "1",
    *,
    user: str = "u1",
    category: str = "10",
    kind: EventType = EventType.CLICK,
    event_id: str | None = None,
    request_id: str | None = None,
    features: dict[str, float | str] | None = None,
) -> Event:
    """An event at ``T0 + ts`` seconds."""
    return Event(
        user_id=user,
        item_id=item,
        type=kind,
        ts=T0 + ts,
        category_id=category,
        event_id=event_id,
        request_id=request_id,
        features=features or {},
    )
