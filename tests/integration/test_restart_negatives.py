"""A worker process killed with SIGKILL as events stream in, then restarted on the same disk
(RocksDB reopened) or on an empty one (the partitions restored from the state changelog): its
negative sampler comes back as of each partition's committed offset, so every sample it emits,
from the first on, has its K negatives, and the samples are those of an uninterrupted run."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from contracts.schema import Event, EventType, parse_event
from contracts.settings import Settings
from feature_store import FeatureConfig, MemoryStore, PartitionWorker, decode_samples, stable_id
from streaming.admin import ensure_topics, read_topic
from streaming.producer import EventProducer
from streaming.replay import replay
from tests.support.events import synthetic_events
from tests.support.workers import WorkerProcess, wait_caught_up

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NEWCOMERS = 40


def send(settings: Settings, events: list[Event]) -> None:
    with EventProducer(settings) as producer:
        replay(events, producer, progress=False)


def newcomer_clicks(after: float) -> list[Event]:
    """One click each by users with no history, on items never seen: nothing but the target
    is excluded from their negatives, and every partition gets some."""
    return [
        Event(f"newcomer-{i}", f"new-{i}", EventType.CLICK, after + i, "c", f"newcomer-{i}")
        for i in range(NEWCOMERS)
    ]


def samples_by_partition(settings: Settings) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = defaultdict(list)
    for r in read_topic(settings, settings.topics.samples, idle_timeout_s=3):
        out[r.partition].append(r.value)
    return out


def uninterrupted_samples(settings: Settings) -> set[bytes]:
    """The samples one worker per partition makes, in memory and without a crash, from the
    events as they stand in ``events``."""
    records: dict[int, list[tuple[int, Event]]] = defaultdict(list)
    for r in read_topic(settings, settings.topics.events, idle_timeout_s=3):
        event = parse_event(
            r.value, max_bytes=settings.max_event_bytes, min_ts=settings.min_event_ts
        )
        records[r.partition].append((r.offset, event))
    config, out = FeatureConfig.from_settings(settings), set()
    for partition, part in records.items():
        worker = PartitionWorker(MemoryStore(), partition, config)
        out.update(worker.process(sorted(part, key=lambda record: record[0])).samples)
    return out


@pytest.mark.parametrize("disk", ["same", "empty"])
def test_samples_after_a_kill_9_restart_have_their_negatives(
    settings: Settings, tmp_path: Path, disk: str
) -> None:
    events = synthetic_events()
    half = len(events) // 2
    ensure_topics(settings)
    send(settings, events[:half])
    worker = WorkerProcess(settings, tmp_path / "a", tmp_path / "a.log")
    wait_caught_up(settings)  # every partition has committed batches, well short of a checkpoint
    send(settings, events[half:])
    worker.kill()  # while the second half streams in (or before it arrives)
    before = {p: len(s) for p, s in samples_by_partition(settings).items()}

    send(settings, newcomer_clicks(after=max(e.ts for e in events) + 60))
    state_dir = tmp_path / ("a" if disk == "same" else "b")
    with WorkerProcess(settings, state_dir, tmp_path / f"{disk}.log"):
        wait_caught_up(settings)
    samples = samples_by_partition(settings)

    k = FeatureConfig.from_settings(settings).samples.negatives
    after = {p: s[before.get(p, 0) :] for p, s in samples.items()}
    assert set(after) == set(range(settings.topics.events_partitions))
    for partition, restarted in after.items():  # in the order the restarted worker sent them
        rows = [decode_samples([blob]).size for blob in restarted]
        assert rows and all(n == 1 + k for n in rows), f"partition {partition}: {rows[:10]}"
    emitted = {blob for part in samples.values() for blob in part}
    assert emitted == uninterrupted_samples(settings)  # none lost, none from another sampler
    newcomers = {stable_id(f"newcomer-{i}") for i in range(NEWCOMERS)}
    assert newcomers <= {int(decode_samples([blob]).user[0]) for blob in emitted}
