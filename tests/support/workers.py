"""Real worker processes for integration tests, readers of what they leave on Kafka, and waits
for them: caught up with ``events``, some progress, partitions shared out."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from types import TracebackType

from kafka import KafkaConsumer, TopicPartition

from contracts.settings import Settings
from feature_store import UserState
from feature_store.state_delta import record_user
from streaming.admin import end_offsets
from streaming.changelog import MARKER_KEY, META_PREFIX, StateReplay
from tests.support.processes import REPO, TWINSTREAM, deployment_env
from tests.support.waiting import wait_until


class WorkerProcess:
    """``twinstream worker`` in a subprocess of its own, with its own state folder."""

    def __init__(self, settings: Settings, state_dir: Path, log: Path, *extra: str) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [*TWINSTREAM, "worker", "--state-dir", str(state_dir), *extra],
                cwd=REPO,
                env=deployment_env(settings),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def read_changelog(
    settings: Settings,
) -> tuple[dict[str, UserState], dict[int, int], dict[str, set[int]]]:
    """Latest state per user, latest marker per partition, partitions each user was written to."""
    n = settings.topics.events_partitions
    topic = settings.topics.state_changelog
    consumer = KafkaConsumer(
        **settings.kafka_config(),
        enable_auto_commit=False,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    tps = [TopicPartition(topic, p) for p in range(n)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    ends = consumer.end_offsets(tps)
    replays = {tp.partition: StateReplay() for tp in tps}  # checkpoints and deltas
    markers: dict[int, int] = {}
    partitions: dict[str, set[int]] = {}
    while any(consumer.position(tp) < ends[tp] for tp in tps):
        for tp, records in consumer.poll(timeout_ms=1000).items():
            for r in records:
                if r.key == MARKER_KEY:
                    markers[tp.partition] = int.from_bytes(r.value, "big", signed=True)
                elif not r.key.startswith(META_PREFIX):
                    replays[tp.partition].apply(r.key, r.value)
                    partitions.setdefault(record_user(r.key), set()).add(tp.partition)
    consumer.close()
    states: dict[str, UserState] = {}
    for replay in replays.values():
        states |= replay.states
    return states, markers, partitions


def wait_caught_up(settings: Settings, timeout_s: float = 120.0) -> dict[str, UserState]:
    """Wait until every partition's marker reaches the last offset of ``events``, read after the
    markers: an event routed to its owner's partition (:mod:`streaming.routing`) is there before
    the marker that covers its source, so the copies are covered too."""
    n = settings.topics.events_partitions
    markers: dict[int, int] = {}
    want: dict[int, int] = {}

    def caught_up() -> dict[str, UserState] | None:
        states, seen, _ = read_changelog(settings)
        markers.clear()
        markers.update(seen)
        ends = end_offsets(settings, settings.topics.events, n)
        want.clear()
        want.update({p: end - 1 for p, end in ends.items() if end})
        return states if all(markers.get(p, -1) >= off for p, off in want.items()) else None

    return wait_until(
        caught_up,
        timeout_s=timeout_s,
        what="the workers to catch up (every marker at the last offset of events)",
        interval_s=1.0,
        detail=lambda: f"markers {markers}, last offsets {want}",
    )


def wait_for_some_progress(settings: Settings, timeout_s: float = 60.0) -> None:
    """Wait until a worker has written its first marker (it processes ``events``)."""
    wait_until(
        lambda: read_changelog(settings)[1], timeout_s=timeout_s, what="the worker's first marker"
    )


def owned_partitions(state_dir: Path) -> set[str]:
    """The partitions whose RocksDB state a worker keeps under ``state_dir``."""
    return {p.name for p in state_dir.glob("*/p*.rocksdb")}


def wait_until_each_owns_partitions(
    state_dirs: list[Path], partitions: int, timeout_s: float = 120.0
) -> list[set[str]]:
    """The partitions each worker process holds, once every one holds some and together they
    hold all (a process that joins the group after the first has all partitions gets its share
    at the next rebalance)."""
    owned: list[set[str]] = []

    def shared_out() -> list[set[str]] | None:
        owned[:] = [owned_partitions(d) for d in state_dirs]
        return owned if all(owned) and sum(map(len, owned)) == partitions else None

    return wait_until(
        shared_out,
        timeout_s=timeout_s,
        what=f"every worker process to own some of the {partitions} partitions",
        detail=lambda: f"owned {owned}",
    )
