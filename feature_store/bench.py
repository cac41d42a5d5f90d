"""Feature-store measurements: ``python -m feature_store.bench [--quick]``.

1. TWIN-V2 clustering of one user at the 100,000 cap (64-d embeddings): a full build (wall time,
   tracemalloc peak, cluster count), the incremental path (growth to the cap re-clustering every
   ``recluster_every`` behaviours, then steady state at the cap) per behaviour.
2. The state of that user: encoded size, encode and decode time.
3. ``decode_samples`` on a batch of 2,048 samples (L = 200, up to 1,000 clusters).
4. Partition-worker throughput over the Taobao log in ``../shared/data`` (when present).
"""

from __future__ import annotations

import argparse
import csv
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from contracts.schema import TYPE_ALIASES, Event
from feature_store.cluster_config import ClusterConfig
from feature_store.clustering import ClusterState, update
from feature_store.ingest import PartitionWorker
from feature_store.sample_format import decode_samples, encode_sample, make_targets
from feature_store.state import UserState
from feature_store.state_format import behaviour_dtype
from feature_store.store import MemoryStore

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


class TableEmbedder:
    """A fixed random item table standing in for a model snapshot's embeddings."""

    version = 1

    def __init__(self, n_items: int, dim: int) -> None:
        rng = np.random.default_rng(0)
        self.table = rng.standard_normal((n_items, dim)).astype(np.float32)

    def __call__(self, items: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        return self.table[items % self.table.shape[0]]


def synthetic_log(n: int, n_items: int = 50_000, n_dense: int = 2) -> np.ndarray:
    rng = np.random.default_rng(1)
    log = np.zeros(n, dtype=behaviour_dtype(n_dense))
    log["item"] = rng.integers(0, n_items, n)
    log["category"] = log["item"] % 300
    log["ts"] = 1.5e9 + np.arange(n) * 30.0
    log["session"] = np.arange(n) // 20
    log["dense"] = rng.random((n, n_dense))
    return log


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench_full(log: np.ndarray, cfg: ClusterConfig, embedder: TableEmbedder) -> ClusterState:
    seconds, cs = timed(lambda: update(ClusterState(), log, 0, cfg, embedder))
    tracemalloc.start()
    update(ClusterState(), log, 0, cfg, embedder)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert isinstance(cs, ClusterState)
    sizes = cs.clusters["size"]
    print(
        f"full build, {log.shape[0]:,} behaviours, d={embedder.table.shape[1]}: {seconds:.2f} s, "
        f"peak {peak / 2**20:.0f} MiB (tracemalloc), {sizes.shape[0]} clusters "
        f"(budget {cfg.max_clusters}, B={cfg.base}), {cs.blocks.shape[0]} blocks, "
        f"mean leaf {sizes.mean():.1f}"
    )
    return cs


def bench_incremental(log: np.ndarray, cfg: ClusterConfig, embedder: TableEmbedder) -> None:
    n, step = log.shape[0], cfg.recluster_every
    cs, start = ClusterState(), time.perf_counter()
    for total in range(step, n + 1, step):
        cs = update(cs, log[:total], 0, cfg, embedder)
    grow = time.perf_counter() - start
    cap = n // 2  # steady state at a cap: the oldest block is a shrinking remnant
    capped = ClusterConfig(lifelong_cap=cap, max_leaf=cfg.max_leaf, max_clusters=cfg.max_clusters)
    cs = update(ClusterState(), log[:cap], 0, capped, embedder)
    extra, start = cap // 2, time.perf_counter()  # long enough to rebuild the remnant
    for total in range(cap + step, cap + extra + 1, step):
        cs = update(cs, log[total - cap : total], total - cap, capped, embedder)
    steady = time.perf_counter() - start
    print(
        f"incremental, re-cluster every {step}: growth to {n:,} in {grow:.1f} s "
        f"({1e6 * grow / n:.0f} us/behaviour); at a {cap:,} cap "
        f"{1e3 * steady / (extra // step):.0f} ms/re-cluster "
        f"({1e6 * steady / extra:.0f} us/behaviour)"
    )


def bench_state(log: np.ndarray, cs: ClusterState) -> None:
    state = UserState(
        log.copy(),
        total=log.shape[0],
        watermark=float(log["ts"][-1]),
        ring=np.zeros(1024, np.int64),
        ring_fill=0,
        ring_pos=0,
        cluster_state=cs,
    )
    enc, blob = timed(state.encode)
    assert isinstance(blob, bytes)
    dec, _ = timed(lambda: UserState.decode(blob))
    print(
        f"state of that user: {len(blob) / 2**20:.2f} MiB, encode {enc * 1e3:.1f} ms, "
        f"decode {dec * 1e6:.0f} us (zero-copy)"
    )


def bench_decode(log: np.ndarray, cs: ClusterState, batch: int = 2_048) -> None:
    rng = np.random.default_rng(2)
    blobs = []
    for i in range(batch // 3):
        end = int(rng.integers(200, log.shape[0]))
        targets = make_targets(
            rng.integers(0, 50_000, 3),
            rng.integers(0, 300, 3),
            labels=[1.0, 0.0, 0.0],
            dense=np.zeros((3, 2), np.float32),
        )
        blobs.append(
            encode_sample(
                user=i, ts=1.5e9, targets=targets, recent=log[end - 200 : end], clusters=cs.clusters
            )
        )
    seconds, arrays = timed(lambda: decode_samples(blobs, recent_length=200))
    size = sum(len(b) for b in blobs) / len(blobs)
    print(
        f"decode_samples: {len(blobs)} messages -> {getattr(arrays, 'size', 0)} rows "
        f"in {seconds * 1e3:.0f} ms; {size / 1024:.1f} KiB per message "
        f"({cs.clusters.shape[0]} clusters)"
    )


def bench_worker(path: Path, chunk: int = 1_000) -> None:
    if not path.exists():
        print(f"worker throughput: skipped, {path} is absent")
        return
    with path.open() as f:
        rows = list(csv.reader(f))
    events = sorted(
        (Event(u, item, TYPE_ALIASES[kind], float(ts), cat) for u, item, cat, kind, ts in rows),
        key=lambda e: e.ts,
    )
    records = list(enumerate(events))
    worker = PartitionWorker(MemoryStore(), 0)
    start = time.perf_counter()
    for k in range(0, len(records), chunk):
        worker.commit(worker.process(records[k : k + chunk]))
    seconds = time.perf_counter() - start
    print(
        f"worker over {path.parent.name} ({len(events):,} events, memory store): "
        f"{len(events) / seconds:,.0f} events/s on one core"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 behaviours instead of 100,000")
    args = parser.parse_args()
    n = 10_000 if args.quick else 100_000
    cfg, embedder = ClusterConfig(), TableEmbedder(50_000, 64)
    log = synthetic_log(n)
    cs = bench_full(log, cfg, embedder)
    bench_incremental(log, cfg, embedder)
    bench_state(log, cs)
    bench_decode(log, cs)
    for name in ("taobao_users", "taobao_stream"):
        bench_worker(SHARED / name / "UserBehavior.csv")


if __name__ == "__main__":
    main()
