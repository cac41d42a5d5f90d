"""The partitions of ``events`` this worker owns: one RocksDB store per partition under the state
directory, each behind a :class:`feature_store.PartitionWorker`.

The ingest service writes these stores and the scoring service reads them; both reach them
through one :class:`OwnedPartitions`. Revoked partitions are closed and deleted, so a user's
state lives on exactly one worker, and assigned ones are caught up from the state changelog first
(:mod:`streaming.changelog`).

Whoever writes the stores does so under :meth:`OwnedPartitions.writing`. Once a write under it
has failed, every later one is refused (:class:`StoresStopped`): the partition workers' memory
may then be ahead of their stores, and the worker is stopping (:mod:`streaming.failstop`).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

from contracts.settings import Settings
from feature_store import FeatureConfig, ItemEmbedder, PartitionWorker, RocksDBStore, UserState
from streaming.changelog import restore_partition
from streaming.metrics import IngestMetrics


class StoresStopped(RuntimeError):
    """A write refused because an earlier one failed (that failure is its cause)."""


class OwnedPartitions:
    """Owned partition number -> its :class:`PartitionWorker`, and the ones paused by a
    rebalance in progress. ``lock`` is held by whoever applies, closes or counts the stores."""

    def __init__(
        self,
        settings: Settings,
        state_dir: str | Path,
        metrics: IngestMetrics,
        config: FeatureConfig | None = None,
    ) -> None:
        self.settings, self.metrics = settings, metrics
        self.state_dir = Path(state_dir)
        self.config = config or FeatureConfig.from_settings(settings)
        self.workers: dict[int, PartitionWorker] = {}
        self.paused: set[int] = set()
        self.lock = asyncio.Lock()
        self.failed: Exception | None = None  # the write that failed, once one did
        self.embedder: ItemEmbedder | None = None  # TWIN-V2 clusters: the live model's items
        # makes the batches in flight durable (the ingest service's); run under the lock before
        # a rebalance pauses, drops or adds a partition
        self.settle: Callable[[], Awaitable[None]] | None = None

    def path(self, partition: int) -> Path:
        """Per events topic: offsets stored for one topic must never gate another's events."""
        return self.state_dir / self.settings.topics.events / f"p{partition}.rocksdb"

    def applying(self, partition: int) -> bool:
        """Whether this worker applies the partition's events now (owned, not in hand-over)."""
        return partition in self.workers and partition not in self.paused

    def active(self) -> dict[int, PartitionWorker]:
        """The owned partitions that are not paused, by number."""
        return {p: w for p, w in self.workers.items() if p not in self.paused}

    def state(self, partition: int | None, user_id: str) -> UserState | None:
        """The user's state in the partition's store; None when the partition is not ours."""
        worker = self.workers.get(partition) if partition is not None else None
        return None if worker is None else worker.store.get(user_id)

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[None]:
        """Hold :attr:`lock` to write the stores; raise :class:`StoresStopped` once a write
        failed, and remember the exception of one that fails now."""
        async with self.lock:
            if self.failed is not None:
                raise StoresStopped("the stores take no write after a failed one") from self.failed
            try:
                yield
            except Exception as exc:
                self.failed = exc
                raise

    async def pause(self, partitions: Iterable[int]) -> None:
        """Stop applying these partitions (a rebalance began); waits for the batch being
        applied and makes the batches in flight durable first (:attr:`settle`)."""
        async with self.lock:
            if self.failed is None and self.settle is not None:
                try:
                    await self.settle()
                except Exception as exc:
                    self.failed = exc
                    raise
            self.paused |= set(partitions)

    async def own(self, partitions: Iterable[int]) -> None:
        """The new assignment: drop what we lost (state deleted), catch up what we gained."""
        wanted = set(partitions)
        async with self.writing():
            if self.settle is not None:
                await self.settle()
            for p in set(self.workers) - wanted:
                self.workers.pop(p).store.close()
                shutil.rmtree(self.path(p), ignore_errors=True)
            for p in sorted(wanted - set(self.workers)):
                store = RocksDBStore(self.path(p))
                await asyncio.to_thread(restore_partition, self.settings, store, p)
                self.workers[p] = PartitionWorker(store, p, self.config, self.embedder)
            self.paused -= wanted
            self.metrics.assigned_partitions.set(len(self.workers))

    async def close(self) -> None:
        async with self.lock:
            self.close_stores()

    def close_stores(self) -> None:
        """Close every store now; only once nothing can write them (the app has stopped)."""
        for worker in self.workers.values():
            worker.store.close()
        self.workers.clear()
