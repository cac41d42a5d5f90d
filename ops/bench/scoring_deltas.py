"""``bench_scoring --items N --dim D``: scoring latency while deltas apply, at that table size.

A DARE checkpoint with N item rows of width D and full id maps (as ``bench_freshness --items``
writes it) is loaded by the worker's loader; the whole scorer then answers requests (100
candidates, a user with a 100,000-behaviour history) while, on another thread at the watcher's
priority, :class:`serving.delta_follow.DeltaFollower` applies deltas of ``--delta-rows`` rows per
item table with all dense tensors and ``--delta-rows / 10`` id-map changes (new ids on recycled
rows, the vocabulary being full). Each delta arrives as the signed chunks a worker reads from
``model-updates`` (encoded before any timing): the applying thread assembles, verifies, decodes,
prepares and writes it, as the watcher's thread does (the Kafka poll itself is left out).
Requests timed during each apply alternate with as many right after it with none running (the
baseline, measured in the same run); the ratio of their p99 is the figure (goal <= 1.3x), printed
also against the p99 of as many requests before any delta was applied (the strictest baseline:
no swapped-in copy, no delta's after-effects in the caches). The
ways a worker can apply deltas run one after the other: into the off-duty twin, swapped in under
the lock, with the applying thread's share of the GIL limited (the default,
``TWINSTREAM_DELTA_GIL_SHARE``) and without a limit; and in place under the lock
(``TWINSTREAM_DELTA_TWIN=0``).
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prometheus_client import CollectorRegistry

from contracts.settings import Settings
from feature_store import UserState
from ops.bench.freshness_scale import KEY, model_flags
from serving.delta import Delta, DeltaHeader, IdMapChange, chunk_messages
from serving.delta_follow import DeltaFollower
from serving.loading import load_snapshot
from serving.metrics import ScoringMetrics
from serving.requests import ScoreRequest
from serving.scorer import ItemCatalog, ModelHolder, Scorer
from serving.signing import Signer
from serving.snapshot import version_dir

Chunks = list[tuple[bytes, list[tuple[str, bytes]]]]  # one delta's (value, headers) messages
CHUNK_BYTES = Settings().delta_chunk_bytes
QUIET_RUNS = 1500  # about as many as are timed during one mode's deltas


def synthetic_delta(served: Any, version: int, rows: int, seed: int) -> Delta:
    """A delta of ``rows`` random rows per item table, every dense tensor and rows / 10 ids moved
    to recycled rows."""
    rng = np.random.default_rng(seed)
    state = served.model.state_dict()
    n_items = served.mapper.items.capacity
    tables = {k: v for k, v in state.items() if v.ndim == 2 and v.shape[0] == n_items}
    picked = {}
    for name, table in tables.items():
        index = torch.from_numpy(np.unique(rng.integers(1, n_items, rows)))
        picked[name] = (index, torch.randn(index.numel(), table.shape[1]) * 0.01)
    dense = {k: v.clone() for k, v in state.items() if k not in tables}
    keys, map_rows = served.mapper.items.assigned()
    moved = np.unique(rng.integers(0, keys.size, max(1, rows // 10)))
    fresh = np.arange(moved.size, dtype=np.int64) + 10**12 + version * 10**6
    change = IdMapChange(fresh, map_rows[moved].copy(), keys[moved].copy())
    header = DeltaHeader(version, version - 1, 1, time.time(), "dare")
    empty = IdMapChange(*(np.zeros(0, np.int64) for _ in range(3)))
    return Delta(header, picked, dense, {"item": change, "category": empty})


def run(args: argparse.Namespace, state: UserState, timed: Callable[..., list[float]]) -> None:
    folder = Path(tempfile.mkdtemp())
    a = args
    flags = model_flags(a.items, a.dim, a.categories)
    subprocess.run(
        [sys.executable, "-m", "ops.bench.freshness_scale", str(folder), *flags], check=True
    )
    began = time.perf_counter()
    served = load_snapshot(version_dir(folder, 1), signer=Signer.of(KEY))
    took = time.perf_counter() - began
    shutil.rmtree(folder)  # 2.1 GiB at full size; the loaded tensors are the process's own
    print(f"D. {a.items:,} items, dim {a.dim}: checkpoint loaded in {took:.1f} s")
    holder = ModelHolder()
    holder.swap(served)
    scorer = Scorer(holder, ItemCatalog())
    items = tuple(str(i) for i in range(1, 101))
    req = ScoreRequest("r", "u", items, tuple("1" for _ in items))

    def score() -> object:
        return scorer.score(req, state)

    # every delta built before any timing: building one passes over the 4M ids, which would
    # leave the next requests a cold cache that has nothing to do with applying it
    modes = [("twin", True, share) for share in a.gil_share if "twin" in a.modes]
    modes += [("twin, GIL unlimited", True, 1.0)] if "unlimited" in a.modes else []
    modes += [("in place", False, 1.0)] if "inplace" in a.modes else []
    versions = range(served.version + 1, served.version + 1 + len(modes) * a.deltas)
    signer = Signer.of(KEY)
    chain = [
        chunk_messages(synthetic_delta(served, v, a.delta_rows, seed=v), signer, CHUNK_BYTES)
        for v in versions
    ]
    quiet = timed(score, QUIET_RUNS)  # no delta has ever been applied: the strictest baseline
    quiet99 = float(np.percentile(np.array(quiet) * 1000, 99))
    print(f"   scoring p99 quiet (before any delta, {QUIET_RUNS:,} requests) {quiet99:.2f} ms")
    for i, (mode, twin, share) in enumerate(modes):
        follower = DeltaFollower(
            holder, ScoringMetrics.create(CollectorRegistry()), signer, 1 << 34,
            lambda *x: print("refused", x), twin=twin, gil_share=share,
            catch_up_after_s=float("inf"),  # deltas built before timing: their age means nothing
        )  # fmt: skip
        if twin:
            began = time.perf_counter()
            follower.twin_of(served)
            print(
                f"   twin made in {time.perf_counter() - began:.1f} s; "
                f"worker resident {_rss_gib():.2f} GiB"
            )
        if share < 1.0:
            mode += f", GIL share {share}"
        deltas = chain[i * a.deltas : (i + 1) * a.deltas]
        _deltas(deltas, a.delta_rows, follower, score, timed, mode, quiet99)
        print(f"   worker peak resident {_peak_gib():.2f} GiB so far")


def _deltas(
    deltas: list[Chunks],
    rows: int,
    follower: DeltaFollower,
    score: Callable[[], object],
    timed: Callable[..., list[float]],
    mode: str,
    quiet99: float,
) -> None:
    """The deltas applied one by one on another thread while requests are timed, each followed
    by as many requests with none running (the baseline of the same run)."""
    during: list[float] = []
    between: list[float] = []
    others = OtherCpu()
    applier = _Applier(follower)  # one long-lived thread, as the watcher's
    for delta in deltas:
        done = applier.submit(delta)
        window: list[float] = []
        while not done.is_set():
            window += timed(score, 2, warmup=0)
        during += window
        between += timed(score, max(len(window), 20), warmup=0)
    applied = applier.close()
    d50, d99, b99 = (
        float(np.percentile(np.array(x) * 1000, q))
        for x, q in ((during, 50), (during, 99), (between, 99))
    )
    print(
        f"   {mode}: {follower.applied} deltas of up to {rows:,} rows per item table applied, "
        f"{np.mean(applied):.3f} s each (decoded, checked, id maps followed, rows written); "
        f"the lock held {np.median(follower.locked_s) * 1000:.3f} ms median, "
        f"{max(follower.locked_s) * 1000:.3f} ms max"
    )
    print(
        f"   {mode}: scoring while deltas apply ({len(during)} requests) p50 {d50:.2f} ms "
        f"p99 {d99:.2f} ms; right after each ({len(between)} requests) p99 {b99:.2f} ms; "
        f"p99 during / after {d99 / b99:.2f}x, during / quiet {d99 / quiet99:.2f}x (goal <= 1.3x)"
    )
    print(f"   {mode}: {others.report()}")


class OtherCpu:
    """CPU time the rest of the machine used since this was made (all CPUs' busy time in
    ``/proc/stat`` less this process's own): another job on the 2 cores shows up here, and
    explains a slow p99 that has nothing to do with the deltas."""

    def __init__(self) -> None:
        self.began, self.machine, self.own = time.perf_counter(), _machine_busy_s(), _own_cpu_s()

    def report(self) -> str:
        wall = time.perf_counter() - self.began
        other = (_machine_busy_s() - self.machine) - (_own_cpu_s() - self.own)
        return (
            f"other processes used {max(other, 0.0):.2f} CPU-s in these {wall:.1f} s "
            f"({max(other, 0.0) / wall:.2f} cores, the broker included)"
        )


def _machine_busy_s() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def _rss_gib(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / (1 << 20)
    return float("nan")


def _peak_gib() -> float:
    return _rss_gib("VmHWM")


class _Applier:
    """A thread at the watcher's priority that offers each submitted delta to the follower."""

    def __init__(self, follower: DeltaFollower) -> None:
        self.follower, self.seconds = follower, list[float]()
        self._queue: queue.Queue[tuple[Chunks, threading.Event] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def submit(self, delta: Chunks) -> threading.Event:
        done = threading.Event()
        self._queue.put((delta, done))
        return done

    def close(self) -> list[float]:
        self._queue.put(None)
        self._thread.join()
        return self.seconds

    def _run(self) -> None:
        from serving.priority import lower_thread_priority

        lower_thread_priority()  # as the watcher's own thread does
        while (item := self._queue.get()) is not None:
            began = time.perf_counter()
            for value, headers in item[0]:
                self.follower.chunk(value, dict(headers).get("mac"))
            self.seconds.append(time.perf_counter() - began)
            item[1].set()


logging.getLogger("serving.delta_follow").setLevel(logging.WARNING)
