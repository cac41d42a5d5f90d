"""What one event of a lifelong user costs: CPU, bytes to RocksDB, bytes to the state changelog.

    python -m ops.bench.bench_lifelong [--sizes 1000,10000,100000] [--users 32] [--batches 20]
                                       [--no-cycle] [--no-restore] [--narrow-ids]

For each history length, ``--users`` users are given a state of that many behaviours (a
synthetic log, clustered by category as the worker would have), written to a fresh
:class:`feature_store.store.RocksDBStore`; then ``--batches`` batches of one event per user go
through an in-process :class:`feature_store.ingest.PartitionWorker` (states read, samples made,
events applied, clusters updated, the changelog records encoded, the RocksDB batch committed), as
a lifelong user sees in production: about one event per batch. Per event it prints the process
CPU time (of which the RocksDB write), the bytes RocksDB was handed (its ``rocksdb.bytes.written``
statistic: keys, values, batch headers) and the bytes of the changelog records, and beside them
the ratio to the first (shortest) history of the same run: the goal is at most 2x for 100,000
behaviours against 1,000. Also printed, as the baseline of the same run: the size of one user's
whole encoded state, what a write of the full state per event would cost.

Checkpoints (:mod:`feature_store.state_delta`) come once a user's deltas outweigh its state, so a
20-batch run sees none: the cycle phase runs one user of each length one event per batch until
its next checkpoint and prints the changelog bytes per event over that whole cycle (deltas,
checkpoint, tombstones). The restore phase (needs a broker: ``KAFKA_BOOTSTRAP_SERVERS``) publishes
the changelog records of the main phase (every user's first checkpoint, then its deltas and the
batches' markers) to a fresh topic and restores the partition onto an empty disk with
:func:`streaming.changelog.restore_partition`: time, records and bytes read, and a check that
every restored state equals the worker's.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
import uuid
from dataclasses import dataclass

import numpy as np
import rocksdict

from contracts.schema import Event, EventType
from feature_store.cluster_config import ClusterConfig
from feature_store.clustering import ClusterState, update
from feature_store.ingest import FeatureConfig, PartitionWorker
from feature_store.samples import SampleConfig
from feature_store.state import UserState
from feature_store.state_delta import changelog_state_records, full_size
from feature_store.state_format import behaviour_dtype
from feature_store.state_layout import mark_written, state_parts
from feature_store.store import RocksDBOptions, RocksDBStore, StateStore
from streaming.changelog import Records, changelog_records, restore_partition

T0 = 1.6e9
RING = 1_024


class CountingOptions(RocksDBOptions):
    """The store's options with RocksDB statistics on, kept to read ``bytes.written``."""

    def to_options(self) -> rocksdict.Options:
        self.rocks = super().to_options()
        self.rocks.enable_statistics()
        return self.rocks

    def bytes_written(self) -> int:
        found = re.search(
            r"rocksdb\.bytes\.written COUNT : (\d+)", self.rocks.get_statistics() or ""
        )
        return int(found.group(1)) if found else 0


def lifelong_state(
    n: int,
    seed: int = 0,
    ring: int = RING,
    *,
    items: int = 1_000_000,
    categories: int = 500,
    end: float = T0,
) -> UserState:
    """A user with ``n`` clicks one a minute up to ``end`` (made directly, not event by event:
    the one builder of long users, for this benchmark and the tests), sessions of 20, ``ring``
    remembered event ids, items below ``items`` in category item % ``categories``, clustered by
    category as the worker would have (no model snapshot yet)."""
    rng = np.random.default_rng(seed)
    log = np.zeros(n, dtype=behaviour_dtype(0))
    log["item"] = rng.integers(0, items, n)
    log["category"] = log["item"] % categories
    log["ts"] = end - 60.0 * np.arange(n, 0, -1)
    log["type"] = 1
    log["session"] = np.arange(n) // 20
    cs = update(ClusterState(), log, 0, ClusterConfig())
    return UserState(
        log,
        total=n,
        watermark=float(log["ts"][-1]),
        ring=rng.integers(1, 2**62, ring),
        ring_fill=ring,
        ring_pos=0,
        cluster_state=cs,
    )


@dataclass
class Cost:
    """Per event, over the measured batches."""

    cpu_us: float
    rocks_us: float
    rocks_bytes: float
    changelog_bytes: float
    state_bytes: int  # one user's whole encoded state at the end (the full-rewrite baseline)
    samples: list[bytes]  # every sample message of the measured batches
    changelog: Records  # every record of the run: first checkpoints, deltas, markers
    states: dict[str, bytes]  # every user's state at the end, encoded


def write_through(store: StateStore, user: str, state: UserState) -> Records:
    """Write ``state`` as the worker does (its next version: changelog records, then the
    store's parts); its changelog records (a new user's first: a checkpoint)."""
    records: Records = [*changelog_state_records(user, state)]
    store.write_batch({user: state_parts(user, state)}, {})
    mark_written(state)
    return records


def measure(
    size: int, users: int, batches: int, seed: int = 0, config: FeatureConfig | None = None
) -> Cost:
    options = CountingOptions()
    with tempfile.TemporaryDirectory(prefix="bench-lifelong-") as path:
        store = RocksDBStore(path, options)
        base = lifelong_state(size, seed).encode()
        names = [f"user-{size}-{u}" for u in range(users)]
        changelog: Records = []
        for name in names:
            changelog += write_through(store, name, UserState.decode(base))
        worker = PartitionWorker(store, 0, config)
        rng = np.random.default_rng(seed + 1)
        cpu = rocks = 0.0
        rocks_bytes = changelog_bytes = 0
        samples: list[bytes] = []
        offset = 1
        for b in range(batches + 1):  # batch 0 warms up (first reads, caches) and is not counted
            records = []
            for u, name in enumerate(names):
                item = str(int(rng.integers(0, 1_000_000)))
                ts = T0 + 60.0 * b + u * 0.01
                event = Event(name, item, EventType.CLICK, ts, str(int(item) % 500), f"e{offset}")
                records.append((offset, event))
                offset += 1
            written = options.bytes_written()
            started = time.process_time()
            result = worker.process(records)
            sent = changelog_records(result)
            committed = time.process_time()
            worker.commit(result)
            ended = time.process_time()
            changelog += sent
            if b:
                cpu += ended - started
                rocks += ended - committed
                rocks_bytes += options.bytes_written() - written
                changelog_bytes += sum(len(k or b"") + len(v or b"") for k, v in sent)
                samples += result.samples
        states = {
            name: s.encode() for name, s in zip(names, store.get_many(names), strict=True) if s
        }
        assert UserState.decode(states[names[0]]).total == size + batches + 1
        store.close()
    n = users * batches
    return Cost(
        1e6 * cpu / n,
        1e6 * rocks / n,
        rocks_bytes / n,
        changelog_bytes / n,
        len(states[names[0]]),
        samples,
        changelog,
        states,
    )


def sample_sizes(size: int, cost: Cost) -> None:
    """Bytes per sample message, raw and compressed alone, with the codecs aiokafka uses (record
    framing not counted). Alone: the users of this run share one history, so a record batch of
    their samples would compress far better than one of users who share nothing; one sample
    per batch is the bound for a lifelong user's one event per batch."""
    from aiokafka.codec import gzip_encode, lz4_encode, zstd_encode

    blobs = cost.samples
    raw = sum(map(len, blobs)) / len(blobs)
    line = f"{size:>7,} behaviours: {raw / 1024:5.1f} KiB per sample"
    for name, encode in (("lz4", lz4_encode), ("zstd", zstd_encode), ("gzip", gzip_encode)):
        started = time.process_time()
        packed = sum(len(encode(blob)) for blob in blobs) / len(blobs)
        us = 1e6 * (time.process_time() - started) / len(blobs)
        line += f", {name} {packed / 1024:5.2f} KiB (x{raw / packed:.1f}, {us:.0f} us)"
    print(line, flush=True)


def checkpoint_cycle(size: int, seed: int = 0) -> None:
    """One user, one event per batch, until the checkpoint after its first one."""
    with tempfile.TemporaryDirectory(prefix="bench-lifelong-") as path:
        store = RocksDBStore(path)
        user, state = f"cycle-{size}", lifelong_state(size, seed)
        first = write_through(store, user, state)
        worker, rng = PartitionWorker(store, 0), np.random.default_rng(seed + 2)
        started, total, events = time.monotonic(), 0, 0
        while True:
            item = str(int(rng.integers(0, 1_000_000)))
            ts = T0 + 60.0 * events
            event = Event(user, item, EventType.CLICK, ts, str(int(item) % 500), f"c{events}")
            result = worker.process([(events + 1, event)])
            worker.commit(result)
            events += 1
            total += sum(len(k) + len(v or b"") for k, v in result.changelog)
            if any(k == user.encode() for k, _ in result.changelog):
                break
        final = store.get(user)
        store.close()
    assert final is not None
    print(
        f"{size:>7,} behaviours: a checkpoint every {events:,} events "
        f"(first {len(first[0][1] or b'') / 1024:,.0f} KiB, state now "
        f"{full_size(final) / 1024:,.0f} KiB); changelog over the cycle "
        f"{total / events:,.0f} bytes/event, checkpoint and tombstones included "
        f"({time.monotonic() - started:.1f} s)",
        flush=True,
    )


def restore(costs: dict[int, Cost]) -> None:
    """Publish every length's changelog records to one fresh partition, restore onto an empty
    disk, compare."""
    from kafka import KafkaProducer

    from contracts.settings import Settings
    from streaming.admin import ensure_topics

    env = dict(os.environ) | {"TWINSTREAM_TOPIC_PREFIX": f"bench-lifelong-{uuid.uuid4().hex[:6]}-"}
    settings = Settings.from_env(env)
    topic = settings.topics.state_changelog
    ensure_topics(settings, {topic: 1})
    producer = KafkaProducer(**settings.kafka_config(), max_request_size=16 * 2**20, linger_ms=20)
    records = [r for cost in costs.values() for r in cost.changelog]
    for key, value in records:
        producer.send(topic, key=key, value=value, partition=0)
    producer.flush()
    producer.close()
    sent = sum(len(k or b"") + len(v or b"") for k, v in records)
    with tempfile.TemporaryDirectory(prefix="bench-restore-") as path:
        store = RocksDBStore(path)
        started = time.monotonic()
        read = restore_partition(settings, store, 0)
        seconds = time.monotonic() - started
        want = {u: blob for cost in costs.values() for u, blob in cost.states.items()}
        got = store.get_many(list(want))
        store.close()
    same = sum(s is not None and s.encode() == want[u] for u, s in zip(want, got, strict=True))
    print(
        f"restore onto an empty disk: {read:,} records, {sent / 2**20:,.1f} MiB in "
        f"{seconds:.2f} s ({sent / 2**20 / seconds:,.0f} MiB/s); {same}/{len(want)} states "
        "equal the worker's",
        flush=True,
    )


def report(size: int, cost: Cost, first: Cost) -> None:
    cpu, rocks = cost.cpu_us / first.cpu_us, cost.rocks_bytes / first.rocks_bytes
    changelog = cost.changelog_bytes / first.changelog_bytes
    print(
        f"{size:>7,} behaviours: {cost.cpu_us:6.0f} us CPU/event (x{cpu:.2f}; RocksDB write "
        f"{cost.rocks_us:.0f} us), RocksDB {cost.rocks_bytes / 1024:7.1f} KiB/event "
        f"(x{rocks:.2f}), "
        f"changelog {cost.changelog_bytes / 1024:7.1f} KiB/event (x{changelog:.2f}); "
        f"whole state {cost.state_bytes / 1024:,.0f} KiB",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="history lengths")
    parser.add_argument("--users", type=int, default=32, help="users per history length")
    parser.add_argument("--batches", type=int, default=20, help="batches of one event per user")
    parser.add_argument("--no-cycle", action="store_true", help="skip the checkpoint cycles")
    parser.add_argument("--no-restore", action="store_true", help="skip the restore (no broker)")
    parser.add_argument(
        "--narrow-ids", action="store_true", help="samples in narrow rows (SampleConfig.narrow_ids)"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{args.users} users per length, {args.batches} batches of one event per user")
    costs: dict[int, Cost] = {}
    for size in sizes:
        config = FeatureConfig(samples=SampleConfig(narrow_ids=args.narrow_ids))
        costs[size] = measure(size, args.users, args.batches, config=config)
        report(size, costs[size], costs[sizes[0]])
    print("samples: raw, and compressed one by one (ratio, CPU per sample)")
    for size in sizes:
        sample_sizes(size, costs[size])
    if not args.no_cycle:
        print("checkpoint cycles: one user, one event per batch")
        for size in sizes:
            checkpoint_cycle(size)
    if not args.no_restore:
        restore(costs)


if __name__ == "__main__":
    main()
