"""The negative sampler after a restart: a worker rebuilt from the store (same disk) or from the
batches it wrote (what the changelog carries, on an empty disk) draws from the sampler of its
last committed offset, so the first click after the restart has its K negatives and every sample
is the one an uninterrupted run makes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import pytest

from contracts.schema import Event
from feature_store.ingest import FeatureConfig, PartitionWorker
from feature_store.sample_format import decode_samples
from feature_store.state_layout import Parts
from feature_store.store import MemoryStore, StateStore, StateUpdate, as_parts
from tests.support.events import event
from tests.support.ingest import CONFIG, stream

CHUNK = 50
K = CONFIG.samples.negatives


class RecordingStore(MemoryStore):
    """A memory store that keeps every batch written to it, in order: what the state changelog
    receives from the worker (states, offset marker, metadata changes)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple[dict[str, Parts], dict[int, int], dict[str, bytes | None]]] = []

    def write_batch(
        self,
        updates: Mapping[str, StateUpdate],
        offsets: Mapping[int, int],
        meta: Mapping[str, bytes | None] | None = None,
    ) -> None:
        super().write_batch(updates, offsets, meta)
        states = {u: as_parts(u, s) for u, s in updates.items()}
        self.batches.append((dict(states), dict(offsets), dict(meta or {})))

    def replay_into(self, store: StateStore) -> None:
        """Restore ``store`` (an empty disk) from the recorded batches, in order."""
        for states, offsets, meta in self.batches:
            store.write_batch(states, offsets, meta)


def config(checkpoint_every: int) -> FeatureConfig:
    return replace(CONFIG, sampler_checkpoint_every=checkpoint_every)


def commit_chunks(worker: PartitionWorker, records: list[tuple[int, Event]]) -> list[bytes]:
    samples: list[bytes] = []
    for k in range(0, len(records), CHUNK):
        result = worker.process(records[k : k + CHUNK])
        worker.commit(result)
        samples += result.samples
    return samples


def newcomer_click(offset: int) -> list[tuple[int, Event]]:
    """A click by a user with no history: nothing excludes the partition's items from its
    negatives, so its sample holds the target and exactly K negatives."""
    return [(offset, event(20.0 * offset, item="0", user="newcomer", event_id=f"p0/{offset}"))]


def crash_after(store: StateStore, cfg: FeatureConfig, committed: int) -> list[bytes]:
    """Commit ``committed`` chunks, process one more without committing it, and drop the
    worker without any final write (a kill -9): the committed chunks' samples."""
    records = stream(300)
    worker = PartitionWorker(store, 0, cfg)
    done = commit_chunks(worker, records[: committed * CHUNK])
    worker.process(records[committed * CHUNK : (committed + 1) * CHUNK])  # lost: not committed
    return done


def uninterrupted(cfg: FeatureConfig) -> tuple[list[bytes], PartitionWorker]:
    worker = PartitionWorker(MemoryStore(), 0, cfg)
    samples = commit_chunks(worker, stream(300))
    samples += commit_chunks(worker, newcomer_click(300))
    return samples, worker


def assert_resumes_like_an_uninterrupted_run(
    restarted: PartitionWorker, done: list[bytes], cfg: FeatureConfig
) -> None:
    expected, reference = uninterrupted(cfg)
    replay = commit_chunks(restarted, stream(300))  # from offset 0: the committed part skipped
    first = restarted.process(newcomer_click(300))
    restarted.commit(first)
    assert decode_samples(first.samples).size == 1 + K  # the target and its K negatives
    assert done + replay + first.samples == expected  # the same negatives, none counted twice
    assert restarted.builder.sampler.encode() == reference.builder.sampler.encode()
    assert restarted.builder.sampler.total == reference.builder.sampler.total


@pytest.mark.parametrize("checkpoint_every", [1, 3, 100])
@pytest.mark.parametrize("committed", [1, 4])
def test_a_restart_on_the_same_disk_draws_from_the_committed_sampler(
    store: StateStore, checkpoint_every: int, committed: int
) -> None:
    cfg = config(checkpoint_every)
    done = crash_after(store, cfg, committed)
    restarted = PartitionWorker(store, 0, cfg)  # a new process over the same store
    assert restarted.builder.sampler.total == len(done)  # each committed click, once
    assert_resumes_like_an_uninterrupted_run(restarted, done, cfg)


@pytest.mark.parametrize("checkpoint_every", [1, 3, 100])
def test_a_restart_on_an_empty_disk_restores_the_sampler_from_the_written_batches(
    store: StateStore, checkpoint_every: int
) -> None:
    cfg = config(checkpoint_every)
    old_disk = RecordingStore()
    done = crash_after(old_disk, cfg, committed=4)
    old_disk.replay_into(store)  # the new machine's store, from what the changelog carries
    restarted = PartitionWorker(store, 0, cfg)
    assert restarted.builder.sampler.total == len(done)
    assert_resumes_like_an_uninterrupted_run(restarted, done, cfg)


def test_a_batch_between_checkpoints_writes_its_clicks_not_the_whole_sampler() -> None:
    """Cost: between checkpoints the sampler adds 16 bytes per click (item and category) to a
    batch, whatever its size."""
    store = RecordingStore()
    worker = PartitionWorker(store, 0, config(100))
    records = stream(300)
    for k in range(0, len(records), CHUNK):
        result = worker.process(records[k : k + CHUNK])
        worker.commit(result)
        sampler = {key: v for key, v in result.meta.items() if key.startswith("sampler/")}
        assert sum(len(v or b"") for v in sampler.values()) == 16 * result.applied
