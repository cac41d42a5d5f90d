"""Real worker processes for integration tests, and readers of what they leave on Kafka."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from kafka import KafkaConsumer, TopicPartition

from contracts.settings import Settings
from feature_store import UserState
from streaming.admin import end_offsets
from streaming.changelog import MARKER_KEY, META_PREFIX

REPO = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """``twinstream worker`` in a subprocess of its own, with its own state folder."""

    def __init__(self, settings: Settings, state_dir: Path, log: Path, *extra: str) -> None:
        env = dict(os.environ)
        env.update(
            TWINSTREAM_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
            TWINSTREAM_TOPIC_PREFIX=settings.topics.prefix,
            TWINSTREAM_EVENTS_PARTITIONS=str(settings.topics.events_partitions),
            PYTHONUNBUFFERED="1",
        )
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ops.cli", "worker", "--state-dir", str(state_dir), *extra],
                cwd=REPO,
                env=env,
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
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    tps = [TopicPartition(topic, p) for p in range(n)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    ends = consumer.end_offsets(tps)
    states: dict[str, UserState] = {}
    markers: dict[int, int] = {}
    partitions: dict[str, set[int]] = {}
    while any(consumer.position(tp) < ends[tp] for tp in tps):
        for tp, records in consumer.poll(timeout_ms=1000).items():
            for r in records:
                if r.key == MARKER_KEY:
                    markers[tp.partition] = int.from_bytes(r.value, "big", signed=True)
                elif not r.key.startswith(META_PREFIX):
                    user = r.key.decode()
                    states[user] = UserState.decode(r.value)
                    partitions.setdefault(user, set()).add(tp.partition)
    consumer.close()
    return states, markers, partitions


def wait_caught_up(settings: Settings, timeout_s: float = 120.0) -> dict[str, UserState]:
    """Wait until every partition's marker reaches the last offset of ``events``."""
    n = settings.topics.events_partitions
    want = {
        p: end - 1 for p, end in end_offsets(settings, settings.topics.events, n).items() if end
    }
    deadline = time.monotonic() + timeout_s
    while True:
        states, markers, _ = read_changelog(settings)
        if all(markers.get(p, -1) >= off for p, off in want.items()):
            return states
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers did not catch up: markers {markers}, want {want}")
        time.sleep(1.0)
