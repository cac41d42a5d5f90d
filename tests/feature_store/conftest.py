"""Fixtures for the feature store: one parametrised store fixture (RocksDB and memory), events."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from feature_store.store import StateStore
from tests.support.stores import open_store


@pytest.fixture(params=["rocksdb", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    s = open_store(request.param, tmp_path / "state")
    yield s
    s.close()
