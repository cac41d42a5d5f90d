"""What one event of a lifelong user costs: CPU, bytes to RocksDB, bytes to the state changelog.

    python -m ops.bench.bench_lifelong [--sizes 1000,10000,100000] [--users 32] [--batches 20]

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
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import rocksdict

from contracts.schema import Event, EventType
from feature_store.cluster_config import ClusterConfig
from feature_store.clustering import ClusterState, update
from feature_store.ingest import PartitionWorker
from feature_store.state import UserState
from feature_store.state_format import behaviour_dtype
from feature_store.store import RocksDBOptions, RocksDBStore
from streaming.changelog import changelog_records

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


def lifelong_state(n: int, seed: int) -> UserState:
    """A user with ``n`` behaviours, one a minute, sessions of 20, a full dedupe ring,
    clustered by category (no model snapshot yet)."""
    rng = np.random.default_rng(seed)
    log = np.zeros(n, dtype=behaviour_dtype(0))
    log["item"] = rng.integers(0, 1_000_000, n)
    log["category"] = log["item"] % 500
    log["ts"] = T0 - 60.0 * np.arange(n, 0, -1)
    log["type"] = 1
    log["session"] = np.arange(n) // 20
    cs = update(ClusterState(), log, 0, ClusterConfig())
    return UserState(
        log,
        total=n,
        watermark=float(log["ts"][-1]),
        ring=rng.integers(1, 2**62, RING),
        ring_fill=RING,
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


def measure(size: int, users: int, batches: int, seed: int = 0) -> Cost:
    options = CountingOptions()
    with tempfile.TemporaryDirectory(prefix="bench-lifelong-") as path:
        store = RocksDBStore(path, options)
        base = lifelong_state(size, seed)
        names = [f"user-{size}-{u}" for u in range(users)]
        store.write_batch({name: base for name in names}, {0: 0})
        worker = PartitionWorker(store, 0)
        rng = np.random.default_rng(seed + 1)
        cpu = rocks = 0.0
        rocks_bytes = changelog_bytes = 0
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
            changelog = changelog_records(result)
            committed = time.process_time()
            worker.commit(result)
            ended = time.process_time()
            if b:
                cpu += ended - started
                rocks += ended - committed
                rocks_bytes += options.bytes_written() - written
                changelog_bytes += sum(len(k or b"") + len(v or b"") for k, v in changelog)
        state = store.get(names[0])
        assert state is not None and state.total == size + batches + 1
        state_bytes = len(state.encode())
        store.close()
    n = users * batches
    return Cost(1e6 * cpu / n, 1e6 * rocks / n, rocks_bytes / n, changelog_bytes / n, state_bytes)


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
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{args.users} users per length, {args.batches} batches of one event per user")
    costs: dict[int, Cost] = {}
    for size in sizes:
        costs[size] = measure(size, args.users, args.batches)
        report(size, costs[size], costs[sizes[0]])


if __name__ == "__main__":
    main()
