"""Fixtures of the broker-free worker tests: metrics on a registry of their own, and owned
partitions in a temporary state folder whose changelog restore is recorded instead of read."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from contracts.settings import Settings
from feature_store import StateStore
from streaming.metrics import IngestMetrics
from streaming.partitions import OwnedPartitions


@pytest.fixture()
def restored(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The partitions restored from the changelog, in order (nothing is read from Kafka)."""
    calls: list[int] = []

    def restore(settings: Settings, store: StateStore, partition: int) -> int:
        calls.append(partition)
        return 0

    monkeypatch.setattr("streaming.partitions.restore_partition", restore)
    return calls


@pytest.fixture()
def metrics() -> IngestMetrics:
    return IngestMetrics.create(CollectorRegistry())


@pytest.fixture()
async def partitions(
    tmp_path: Path, metrics: IngestMetrics, restored: list[int]
) -> AsyncIterator[OwnedPartitions]:
    owned = OwnedPartitions(Settings(), tmp_path / "state", metrics)
    yield owned
    await owned.close()
