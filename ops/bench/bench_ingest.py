"""Ingest throughput and event-to-state latency of one worker, against a bare Faust agent.

    python -m ops.bench.bench_ingest [--data PATH] [--rate 5000] [--seconds 20] [--processes 1,2]

1. Throughput: the same pre-published topic is consumed by a bare Faust agent (consume only) and
   by one ``twinstream worker`` (validation, RocksDB, sessions, clusters, samples, changelog),
   one after the other, each in its own process; events/s from its first to its last batch.
2. Latency: events are published at ``--rate`` events/s into a running worker; per event, the
   time from its Kafka timestamp to the changelog marker that covers it (written just before the
   local state commit), from the broker's own records; once per ``--processes`` count (one
   ``twinstream worker --processes N`` command). Needs a broker (KAFKA_BOOTSTRAP_SERVERS or
   ``twinstream broker start``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from contracts.schema import Event
from contracts.settings import Settings
from streaming.admin import ensure_topics
from streaming.app import APP_NAME
from streaming.changelog import MARKER_KEY
from streaming.producer import EventProducer
from streaming.replay import replay
from streaming.sources import read_events
from streaming.synthetic import GeneratorConfig, generate

SHARED = Path(__file__).resolve().parents[3] / "shared/data/taobao_stream/UserBehavior.csv"


def fresh_settings() -> Settings:
    env = dict(os.environ) | {"TWINSTREAM_TOPIC_PREFIX": f"bench-{uuid.uuid4().hex[:6]}-"}
    return Settings.from_env(env)


def child_env(settings: Settings) -> dict[str, str]:
    return dict(os.environ) | {
        "TWINSTREAM_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "TWINSTREAM_TOPIC_PREFIX": settings.topics.prefix,
    }


def load(path: str | None) -> list[Event]:
    if path is None and SHARED.exists():
        path = str(SHARED)
    if path is None:
        path = str(Path(tempfile.mkdtemp()) / "UserBehavior.csv")
        generate(GeneratorConfig(users=20_000, long_users=0, mean_sessions=1.0)).write(path)
    events, _ = read_events(path, "taobao")
    return events


def bare_rate(settings: Settings, n: int) -> float:
    cmd = [sys.executable, "-m", "ops.bench.bare_agent", settings.topics.events, str(n)]
    out = subprocess.run(cmd, env=child_env(settings), capture_output=True, text=True, timeout=600)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))
    seen = json.loads(line.removeprefix("RESULT "))
    return n / max(seen["last"] - seen["first"], 1e-9)


class MarkerReader:
    """Follows the state changelog and keeps (partition, covered offset, marker time in s) of
    every marker. Reads each record once: re-reading the topic per check would take CPU from
    the worker under test on a small machine."""

    def __init__(self, settings: Settings) -> None:
        n = settings.topics.events_partitions
        self.consumer = KafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False
        )
        tps = [TopicPartition(settings.topics.state_changelog, p) for p in range(n)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.markers: list[tuple[int, int, float]] = []

    def poll(self) -> list[tuple[int, int, float]]:
        """Everything new up to now (several fetches when the worker wrote a lot)."""
        while batch := self.consumer.poll(timeout_ms=500, max_records=50_000):
            for tp, records in batch.items():
                self.markers += [
                    (tp.partition, int.from_bytes(r.value, "big", signed=True), r.timestamp / 1000)
                    for r in records
                    if r.key == MARKER_KEY
                ]
        return self.markers

    def close(self) -> None:
        self.consumer.close()


def read_all(settings: Settings, topic: str) -> list[tuple[int, int, bytes, bytes, float]]:
    n = settings.topics.events_partitions
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(n)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    ends = consumer.end_offsets(tps)
    out = []
    while any(consumer.position(tp) < ends[tp] for tp in tps):
        for tp, records in consumer.poll(timeout_ms=500).items():
            out += [(tp.partition, r.offset, r.key, r.value, r.timestamp / 1000) for r in records]
    consumer.close()
    return out


def start_worker(settings: Settings, state: Path, processes: int = 1) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "ops.cli", "worker", "--state-dir", str(state)]
    cmd += ["--processes", str(processes)]
    return subprocess.Popen(
        cmd, env=child_env(settings), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def wait_for(
    settings: Settings, n_events: int, timeout_s: float = 600
) -> list[tuple[int, int, float]]:
    ends = {p: e - 1 for p, e in end_offsets(settings).items() if e}
    deadline = time.monotonic() + timeout_s
    reader = MarkerReader(settings)
    try:
        while time.monotonic() < deadline:
            got = reader.poll()
            best = {p: max((o for q, o, _ in got if q == p), default=-1) for p in ends}
            if all(best[p] >= ends[p] for p in ends):
                return got
            time.sleep(1.0)
    finally:
        reader.close()
    raise TimeoutError("worker did not catch up")


def end_offsets(settings: Settings) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    tps = [
        TopicPartition(settings.topics.events, p) for p in range(settings.topics.events_partitions)
    ]
    ends = {tp.partition: o for tp, o in consumer.end_offsets(tps).items()}
    consumer.close()
    return ends


def worker_rate(settings: Settings, n: int) -> float:
    with tempfile.TemporaryDirectory() as state:
        proc = start_worker(settings, Path(state))
        try:
            got = wait_for(settings, n)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    times = sorted(t for _, _, t in got)
    first_batch = min(o for _, o, _ in got)  # events in the first batch are not timed
    return (n - first_batch) / max(times[-1] - times[0], 1e-9)


def latency(settings: Settings, events: list[Event], rate: float, processes: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as state:
        proc = start_worker(settings, Path(state), processes)
        try:
            wait_for_group(settings, processes)
            with EventProducer(settings, linger_ms=5) as producer:
                _paced(producer, events, rate)
            got = wait_for(settings, len(events))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return per_event_latency(settings, got)


def wait_for_group(settings: Settings, members: int, timeout_s: float = 180.0) -> None:
    """Until the workers' consumer group is stable with ``members`` members (then a moment
    for the assignment hooks), so no rebalance falls into the measured window."""
    group = f"{settings.topics.prefix}{APP_NAME}"
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            state = admin.describe_groups([group]).get(group, {})
            if state.get("group_state") == "Stable" and len(state.get("members", [])) == members:
                time.sleep(3.0)
                return
            time.sleep(1.0)
    finally:
        admin.close()
    raise TimeoutError(f"group {group} did not settle with {members} members")


def _paced(producer: EventProducer, events: list[Event], rate: float) -> None:
    start = time.perf_counter()
    for i, event in enumerate(events):
        due = start + i / rate
        while time.perf_counter() < due:
            time.sleep(max(0.0, min(0.002, due - time.perf_counter())))
        producer.send(event)
    producer.flush()


def per_event_latency(settings: Settings, got: list[tuple[int, int, float]]) -> np.ndarray:
    """Per event: time of the first marker covering its offset minus its Kafka timestamp."""
    covering: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for p in {p for p, _, _ in got}:
        marks = sorted((o, t) for q, o, t in got if q == p)
        covering[p] = (np.array([o for o, _ in marks]), np.array([t for _, t in marks]))
    out = []
    for p, offset, _, _, created in read_all(settings, settings.topics.events):
        offsets, times = covering[p]
        i = int(np.searchsorted(offsets, offset))
        if i < offsets.size:
            out.append(times[i] - created)
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data")
    parser.add_argument("--rate", type=float, default=5_000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--processes", default="1,2", help="worker processes of the latency runs, comma-separated"
    )
    args = parser.parse_args()
    events = load(args.data)
    settings = fresh_settings()
    ensure_topics(settings)
    with EventProducer(settings) as producer:
        replay(events, producer, progress=False)
    bare = bare_rate(settings, len(events))
    worker = worker_rate(settings, len(events))
    print(f"events: {len(events)}")
    print(f"bare Faust agent (consume only)  {bare:10,.0f} events/s")
    print(f"twinstream worker (full ingest)  {worker:10,.0f} events/s   ratio {worker / bare:.2f}x")
    for processes in (int(n) for n in args.processes.split(",")):
        paced = fresh_settings()
        ensure_topics(paced)
        lat = latency(paced, events[: int(args.rate * args.seconds)], args.rate, processes)
        p50, p99 = np.percentile(lat, [50, 99])
        print(
            f"event-to-state latency at {args.rate:,.0f} events/s over {lat.size} events, "
            f"{processes} worker process(es): p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
