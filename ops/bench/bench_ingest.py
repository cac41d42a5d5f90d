"""Ingest throughput and event-to-state latency of one worker, against a bare Faust agent.

    python -m ops.bench.bench_ingest [--data PATH] [--rate 5000] [--seconds 20] [--processes 1,2]
        [--compare NAME=VALUE]

1. Throughput: the same pre-published topic is consumed by a plain aiokafka consumer that decodes
   each value with orjson (what Kafka hands a Python consumer), by a bare Faust agent (consume
   only) and by one ``twinstream worker`` (validation, RocksDB, sessions, clusters, samples,
   changelog), one after the other, each in its own process; events/s from its first to its
   last batch. ``--compare NAME=VALUE`` (repeatable) then runs the worker again with that
   setting in its environment, over the same log published to fresh topics (for example
   ``TWINSTREAM_INGEST_OVERLAP=0``). ``--processes 0`` skips the latency runs.
2. Latency: events are published at ``--rate`` events/s into a running worker; per event, the
   time from its Kafka timestamp to the changelog marker that covers it (written just before the
   local state commit), from the broker's own records; once per ``--processes`` count (one
   ``twinstream worker --processes N`` command). Needs a broker (KAFKA_BOOTSTRAP_SERVERS or
   ``twinstream broker start``).

With ``--partitioners murmur2,crc32`` it measures instead what routing costs
(:mod:`streaming.routing`): the same log published by a librdkafka producer (confluent-kafka)
with each partitioner, murmur2 (the project's: every event on its owner's partition) and CRC32
(librdkafka's default: about three in four events elsewhere, each sent on to its owner), then
worker throughput and event-to-state latency at ``--rate`` for each, and their ratio. An event
routed to its owner keeps its Kafka timestamp, so its latency runs to the marker that covers it
on the owner's partition.
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
import orjson
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from contracts.schema import Event
from contracts.settings import Settings
from streaming.admin import admin_client, delete_topics, ensure_topics
from streaming.app import APP_NAME
from streaming.changelog import MARKER_KEY
from streaming.producer import EventProducer
from streaming.replay import replay
from streaming.routing import owner_partition
from streaming.sources import read_events
from streaming.synthetic import GeneratorConfig, generate

LIBRDKAFKA_PARTITIONERS = {"murmur2": "murmur2_random", "crc32": "consistent_random"}
SHARED = Path(__file__).resolve().parents[3] / "shared/data/taobao_stream/UserBehavior.csv"


CREATED: list[Settings] = []  # every run's topics, deleted at the end (drop_topics)


def fresh_settings() -> Settings:
    env = dict(os.environ) | {"TWINSTREAM_TOPIC_PREFIX": f"bench-{uuid.uuid4().hex[:6]}-"}
    CREATED.append(Settings.from_env(env))
    return CREATED[-1]


def drop_topics() -> None:
    """Delete the topics of every run: a run over long10k left 3.9 GB on the broker (samples,
    changelog, events), and a broker stops once its disk is full. Every topic with the run's
    prefix goes, the leader topics its Faust apps made (``...-__assignor-__leader``) too."""
    for settings in CREATED:
        made = set(settings.topics.all()) | set(topics_with_prefix(settings))
        delete_topics(settings, sorted(made))
    CREATED.clear()


def topics_with_prefix(settings: Settings) -> list[str]:
    """The broker's topics whose names start with the run's topic prefix."""
    client = admin_client(settings)
    try:
        return [name for name in client.list_topics() if name.startswith(settings.topics.prefix)]
    finally:
        client.close()


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


PLAIN_CONSUMER = """
import asyncio, json, sys, time
import orjson
from aiokafka import AIOKafkaConsumer
async def main(bootstrap, topic, n):
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    seen, first = 0, 0.0
    try:
        while seen < n:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                if not seen:
                    first = time.time()
                for r in records:
                    orjson.loads(r.value)
                seen += len(records)
    finally:
        await consumer.stop()
    print("RESULT " + json.dumps({"first": first, "last": time.time()}))
asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def plain_rate(settings: Settings, n: int) -> float:
    """A plain aiokafka consumer decoding each value with orjson, in its own process."""
    cmd = [sys.executable, "-c", PLAIN_CONSUMER, settings.bootstrap_servers]
    cmd += [settings.topics.events, str(n)]
    out = subprocess.run(cmd, env=child_env(settings), capture_output=True, text=True, timeout=600)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))
    seen = json.loads(line.removeprefix("RESULT "))
    return n / max(seen["last"] - seen["first"], 1e-9)


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
        self.consumer = KafkaConsumer(**settings.kafka_config(), enable_auto_commit=False)
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
    consumer = KafkaConsumer(**settings.kafka_config(), enable_auto_commit=False)
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


def start_worker(
    settings: Settings, state: Path, processes: int = 1, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "ops.cli", "worker", "--state-dir", str(state)]
    cmd += ["--processes", str(processes)]
    return subprocess.Popen(
        cmd,
        env=child_env(settings) | (env or {}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_for(
    settings: Settings, n_events: int, timeout_s: float = 600
) -> list[tuple[int, int, float]]:
    """The markers, once they cover the last offset of each partition of ``events`` as read
    after them (events routed to their owner are there before their source's marker)."""
    deadline = time.monotonic() + timeout_s
    reader = MarkerReader(settings)
    try:
        while time.monotonic() < deadline:
            got = reader.poll()
            ends = {p: e - 1 for p, e in end_offsets(settings).items() if e}
            best = {p: max((o for q, o, _ in got if q == p), default=-1) for p in ends}
            if all(best[p] >= ends[p] for p in ends):
                return got
            time.sleep(1.0)
    finally:
        reader.close()
    raise TimeoutError("worker did not catch up")


def end_offsets(settings: Settings) -> dict[int, int]:
    consumer = KafkaConsumer(**settings.kafka_config())
    tps = [
        TopicPartition(settings.topics.events, p) for p in range(settings.topics.events_partitions)
    ]
    ends = {tp.partition: o for tp, o in consumer.end_offsets(tps).items()}
    consumer.close()
    return ends


def worker_rate(settings: Settings, n: int, env: dict[str, str] | None = None) -> float:
    with tempfile.TemporaryDirectory() as state:
        proc = start_worker(settings, Path(state), env=env)
        try:
            got = wait_for(settings, n)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    times = sorted(t for _, _, t in got)
    first_batch = min(o for _, o, _ in got)  # events in the first batch are not timed
    return (n - first_batch) / max(times[-1] - times[0], 1e-9)


def latency(
    settings: Settings,
    events: list[Event],
    rate: float,
    processes: int,
    partitioner: str | None = None,
) -> np.ndarray:
    """Per event, at ``rate``: the project's producer, or librdkafka's with ``partitioner``."""
    with tempfile.TemporaryDirectory() as state:
        proc = start_worker(settings, Path(state), processes)
        try:
            wait_for_group(settings, processes)
            if partitioner is None:
                with EventProducer(settings, linger_ms=5) as producer:
                    _paced(producer, events, rate)
            else:
                _paced(LibrdkafkaProducer(settings, partitioner), events, rate)
            got = wait_for(settings, len(events))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return per_event_latency(settings, got)


def wait_for_group(settings: Settings, members: int, timeout_s: float = 180.0) -> None:
    """Until the workers' consumer group is stable with ``members`` members (then a moment
    for the assignment hooks), so no rebalance falls into the measured window."""
    group = f"{settings.topics.prefix}{APP_NAME}"
    admin = KafkaAdminClient(**settings.kafka_config())
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


def _paced(producer: EventProducer | LibrdkafkaProducer, events: list[Event], rate: float) -> None:
    start = time.perf_counter()
    for i, event in enumerate(events):
        due = start + i / rate
        while time.perf_counter() < due:
            time.sleep(max(0.0, min(0.002, due - time.perf_counter())))
        producer.send(event)
    producer.flush()


def per_event_latency(settings: Settings, got: list[tuple[int, int, float]]) -> np.ndarray:
    """Per event: time of the first marker covering its offset minus its Kafka timestamp, on
    its owner's partition (an event elsewhere is counted as its copy there)."""
    covering: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for p in {p for p, _, _ in got}:
        marks = sorted((o, t) for q, o, t in got if q == p)
        covering[p] = (np.array([o for o, _ in marks]), np.array([t for _, t in marks]))
    out = []
    n = settings.topics.events_partitions
    for p, offset, _, value, created in read_all(settings, settings.topics.events):
        if owner_partition(str(orjson.loads(value)["user_id"]), n) != p:
            continue
        offsets, times = covering[p]
        i = int(np.searchsorted(offsets, offset))
        if i < offsets.size:
            out.append(times[i] - created)
    return np.array(out)


class LibrdkafkaProducer:
    """confluent-kafka (librdkafka) with a partitioner of its own: ``murmur2`` (Java's and the
    project's) or ``crc32`` (librdkafka's default); idempotent, as the project's producer."""

    def __init__(self, settings: Settings, partitioner: str) -> None:
        from confluent_kafka import Producer  # the dev extra

        self.topic = settings.topics.events
        self.producer = Producer(
            {
                **settings.librdkafka_config(),
                "partitioner": LIBRDKAFKA_PARTITIONERS[partitioner],
                "enable.idempotence": True,
                "linger.ms": 5,
            }
        )

    def send(self, event: Event) -> None:
        while True:
            try:
                self.producer.produce(self.topic, event.to_json(), event.key)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                self.producer.poll(0.05)
        self.producer.poll(0)

    def flush(self) -> None:
        if self.producer.flush(60):
            raise RuntimeError("librdkafka could not deliver every event")


def compare_partitioners(
    events: list[Event], names: list[str], rate: float, seconds: float
) -> None:
    """Throughput and latency with each partitioner, the same log; ratios to the first."""
    rows = []
    for name in names:
        settings = fresh_settings()
        ensure_topics(settings)
        producer = LibrdkafkaProducer(settings, name)
        for event in events:
            producer.send(event)
        producer.flush()
        rate_s = worker_rate(settings, len(events))
        copies = sum(end_offsets(settings).values()) - len(events)
        paced = fresh_settings()
        ensure_topics(paced)
        lat = latency(paced, events[: int(rate * seconds)], rate, 1, name)
        rows.append((name, rate_s, copies, *np.percentile(lat, [50, 99])))
        print(f"{name}: {rate_s:,.0f} events/s, {copies:,} routed", flush=True)
    print(f"events: {len(events)}; latency at {rate:,.0f} events/s over {int(rate * seconds)}")
    base = rows[0]
    for name, rate_s, copies, p50, p99 in rows:
        print(
            f"{name:8} worker {rate_s:8,.0f} events/s (ratio {rate_s / base[1]:.2f}), "
            f"routed {copies / len(events):4.0%}, event-to-state p50 {p50 * 1000:,.0f} ms, "
            f"p99 {p99 * 1000:,.0f} ms (ratio {p99 / base[4]:.2f})"
        )


def compare_rate(events: list[Event], spec: str) -> float:
    """Worker events/s over ``events`` published to fresh topics, with ``spec`` (NAME=VALUE)
    in the worker's environment."""
    name, _, value = spec.partition("=")
    settings = fresh_settings()
    ensure_topics(settings)
    with EventProducer(settings) as producer:
        replay(events, producer, progress=False)
    return worker_rate(settings, len(events), {name: value})


def main() -> None:
    try:
        measure()
    finally:
        drop_topics()


def measure() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data")
    parser.add_argument("--rate", type=float, default=5_000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--processes", default="1,2", help="worker processes of the latency runs, comma-separated"
    )
    parser.add_argument(
        "--partitioners",
        help="instead: the cost of routing, e.g. murmur2,crc32 (librdkafka's, comma-separated)",
    )
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="then a worker with this environment setting over the same log, published again to "
        "fresh topics (e.g. TWINSTREAM_INGEST_OVERLAP=0); repeatable",
    )
    args = parser.parse_args()
    events = load(args.data)
    if args.partitioners:
        compare_partitioners(events, args.partitioners.split(","), args.rate, args.seconds)
        return
    settings = fresh_settings()
    ensure_topics(settings)
    with EventProducer(settings) as producer:
        replay(events, producer, progress=False)
    plain = plain_rate(settings, len(events))
    bare = bare_rate(settings, len(events))
    worker = worker_rate(settings, len(events))
    print(f"events: {len(events)}")
    print(f"plain aiokafka + orjson          {plain:10,.0f} events/s")
    print(f"bare Faust agent (consume only)  {bare:10,.0f} events/s")
    print(
        f"twinstream worker (full ingest)  {worker:10,.0f} events/s   ratio {worker / bare:.2f}x "
        f"of bare Faust, {worker / plain:.3f}x of plain aiokafka",
        flush=True,
    )
    for spec in args.compare:
        print(f"twinstream worker with {spec:<18}{compare_rate(events, spec):10,.0f} events/s")
        drop_topics()  # a run's topics, each a few GB on long logs, gone before the next
    for processes in (int(n) for n in args.processes.split(",") if int(n) > 0):
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
