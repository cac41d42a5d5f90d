"""TWIN-V2 clustering in the worker with the live model's item embeddings: µs per ingested event.

    python -m ops.bench.bench_clustering [--data PATH --format taobao] [--snapshot-every-s 60]

A log goes through one :class:`feature_store.PartitionWorker` (memory store, chunks of
``--chunk`` records, as the ingest agent hands them over) twice, in one process:

- **baseline**: no embedder, the category clustering a worker does before any snapshot;
- **live**: :class:`serving.item_embeddings.LiveItemEmbeddings` (rebuild budget ``--rebuild-us``
  per event) over a
  :class:`serving.scorer.ModelHolder` that gets a new snapshot (a real TWIN-V2 model and feature
  mapper, ``--dim``, every item of the log admitted) every ``--snapshot-every-s`` seconds of event
  time; the worker adopts one at most every ``--adopt-every-s`` (its default: 600 s), and every
  touched user whose clusters are older re-clusters wholly.

For each it prints the time spent in ``UserState.maybe_recluster`` per ingested event (the
clustering, amortised: growth every ``recluster_every`` behaviours and re-clusterings for new
embeddings), the worker's whole time per event, the ratio live / baseline, and the mean leaf size
of the users' clustered parts at the end (untrained tables: the leaf sizes follow from γ, the
clamped splits and the user's length, not from what the model learnt). The goals are ≤ 20 µs of
clustering per event and a mean leaf of 5 to 20 (issue 15); the worker's background sweep
(:mod:`feature_store.clustering_sweep`) is not run here.
Without ``--data`` it reads the generated long-history log of ``twinstream generate`` given by
``--long`` or makes one (``--long-users`` users of ``--long-history`` behaviours).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contracts.schema import Event, EventType
from feature_store import FeatureConfig, MemoryStore, PartitionWorker
from feature_store.clustering import RebuildBudget
from feature_store.ids import stable_ids
from feature_store.state import UserState
from models import ModelConfig, build_model
from models.batch import Batch
from serving.features import FeatureMapper, MapperConfig, RawIds
from serving.item_embeddings import LiveItemEmbeddings
from serving.scorer import ModelHolder
from streaming.sources import EventLog, load_log
from streaming.synthetic import GeneratorConfig
from streaming.synthetic import generate as generate_log


@dataclass
class InMemorySnapshot:
    """What the scorer holds of a loaded snapshot (``serving.scorer.ServingModel``)."""

    version: int
    model: Any
    mapper: FeatureMapper
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def batch(self, arrays: Any) -> Batch:
        return self.mapper.to_batch(arrays, learn=False).to(self.device)


class Snapshots:
    """A new snapshot version every ``every_s`` of event time (two tables, alternating)."""

    def __init__(self, log: EventLog, dim: int, every_s: float) -> None:
        items, cats = stable_ids(log.item_id), stable_ids(log.category_id)
        n = len(np.unique(items)) + 2
        config = ModelConfig(n_items=n, n_categories=len(np.unique(cats)) + 2, dim=dim)
        mapper = FeatureMapper(MapperConfig.for_model(config))
        mapper.observe(RawIds(items=items, categories=cats))
        torch.manual_seed(0)
        self.models = [build_model("twin_v2", config).eval() for _ in range(2)]
        self.mapper, self.every_s = mapper, every_s
        self.holder, self.version, self.next_ts = ModelHolder(), 0, -np.inf

    def advance(self, ts: float) -> None:
        if ts < self.next_ts:
            return
        self.version += 1
        model = self.models[self.version % 2]
        self.holder.swap(InMemorySnapshot(self.version, model, self.mapper))
        self.next_ts = ts + self.every_s


@dataclass(frozen=True)
class Run:
    name: str
    events: int
    cluster_s: float
    worker_s: float
    reclusterings: int
    mean_leaf: float
    versions: int
    rebuilds: str = ""

    def line(self) -> str:
        return (
            f"{self.name:9s} clustering {self.cluster_s / self.events * 1e6:7.2f} µs/event "
            f"({self.reclusterings:,} runs), worker {self.worker_s / self.events * 1e6:7.1f} "
            f"µs/event, mean leaf {self.mean_leaf:5.1f}, embedding versions {self.versions}"
            f"{self.rebuilds}"
        )


class Timed:
    """Wraps ``UserState.maybe_recluster`` to add up its time (and runs that did work)."""

    def __init__(self) -> None:
        self.seconds, self.runs = 0.0, 0
        self.original: Callable[..., bool] = UserState.maybe_recluster

    def __enter__(self) -> Timed:
        original = self.original

        def timed(state: UserState, *args: Any, **kwargs: Any) -> bool:
            start = time.perf_counter()
            ran = original(state, *args, **kwargs)
            self.seconds += time.perf_counter() - start
            self.runs += int(ran)
            return ran

        UserState.maybe_recluster = timed  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        UserState.maybe_recluster = self.original  # type: ignore[method-assign]


def events_of(log: EventLog) -> list[tuple[int, Event]]:
    kinds = {"click": EventType.CLICK, "cart": EventType.CART, "fav": EventType.FAV,
             "buy": EventType.BUY}  # fmt: skip
    return [
        (i, Event(str(u), str(it), kinds.get(str(k), EventType.CLICK), float(ts), str(c),
                  event_id=f"e{i}"))
        for i, (u, it, c, k, ts) in enumerate(
            zip(log.user_id, log.item_id, log.category_id, log.type, log.ts, strict=True)
        )
    ]  # fmt: skip


def run(
    name: str,
    records: list[tuple[int, Event]],
    chunk: int,
    snapshots: Snapshots | None,
    adopt_s: float,
    features: FeatureConfig,
    rebuild_us: float = 3.0,
) -> Run:
    live = None
    if snapshots is not None:
        clock_ts = [0.0]
        budget = RebuildBudget(per_event_s=rebuild_us * 1e-6)
        live = LiveItemEmbeddings(snapshots.holder, adopt_s, lambda: clock_ts[0], budget)
    worker = PartitionWorker(MemoryStore(), 0, features, embedder=live)
    versions = set()
    with Timed() as timed:
        start = time.perf_counter()
        for k in range(0, len(records), chunk):
            part = records[k : k + chunk]
            if snapshots is not None and live is not None:
                ts = part[0][1].ts
                snapshots.advance(ts)
                clock_ts[0] = ts
                versions.add(live.version)
            worker.commit(worker.process(part))
            if k // chunk % 50 == 0:
                rate = (k + len(part)) / (time.perf_counter() - start)
                print(f"  {name}: {k + len(part):,}/{len(records):,} events, {rate:,.0f}/s",
                      file=sys.stderr, flush=True)  # fmt: skip
        seconds = time.perf_counter() - start
    users = list(dict.fromkeys(e.user_id for _, e in records))
    states = [s for s in worker.store.get_many(users) if s is not None]
    sizes = [s.cluster_state.clusters["size"] for s in states]
    mean_leaf = float(np.concatenate(sizes).mean()) if sizes else 0.0
    done = (
        ""
        if live is None
        else (f", stale users rebuilt {live.budget.rebuilds:,} / deferred {live.budget.deferred:,}")
    )
    n = len(records)
    return Run(name, n, timed.seconds, seconds, timed.runs, mean_leaf, len(versions), done)


def the_log(args: argparse.Namespace) -> tuple[str, EventLog]:
    if args.data is not None:
        return str(args.data), load_log(args.data, args.format)
    cfg = GeneratorConfig(users=0, long_users=args.long_users, long_history=args.long_history)
    synthetic = generate_log(cfg)
    as_str = np.vectorize(str, otypes=[object])
    kinds = np.array(["click", "cart", "fav", "buy"], dtype=object)
    names = {"pv": 0, "cart": 1, "fav": 2, "buy": 3}
    kind = np.array([names[str(b)] for b in synthetic.behaviour])
    log = EventLog(as_str(synthetic.user), as_str(synthetic.item), as_str(synthetic.category),
                   kinds[kind], synthetic.ts.astype(np.float64))  # fmt: skip
    return f"generated: {args.long_users} users x {args.long_history} behaviours", log


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--format", default="taobao")
    p.add_argument("--long-users", type=int, default=20)
    p.add_argument("--long-history", type=int, default=5_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--chunk", type=int, default=500)
    p.add_argument("--snapshot-every-s", type=float, default=60.0, help="event time")
    p.add_argument("--adopt-every-s", type=float, default=600.0, help="event time")
    p.add_argument("--rebuild-us", type=float, default=3.0, help="rebuild budget per event (µs)")
    default = FeatureConfig().clusters
    p.add_argument("--recluster-every", type=int, default=default.recluster_every)
    p.add_argument("--lloyd-iters", type=int, default=default.lloyd_iters)
    p.add_argument(
        "--by-token",
        action=argparse.BooleanOptionalAction,
        default=default.by_token,
        help="cluster on [item, category] token rows (ClusterConfig.by_token)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    name, log = the_log(args)
    records = events_of(log)
    print(f"{name}: {len(records):,} events, {len(np.unique(log.user_id)):,} users; "
          f"snapshot every {args.snapshot_every_s:g} s, adopted at most every "
          f"{args.adopt_every_s:g} s of event time; dim {args.dim}; torch threads 1")  # fmt: skip
    clusters = replace(
        FeatureConfig().clusters,
        recluster_every=args.recluster_every,
        lloyd_iters=args.lloyd_iters,
        by_token=args.by_token,
        block=None,  # B derived again
    )
    features = replace(FeatureConfig(), clusters=clusters)
    print(
        f"ClusterConfig: recluster_every {clusters.recluster_every}, lloyd_iters "
        f"{clusters.lloyd_iters}, B {clusters.base}, max_clusters {clusters.max_clusters}, "
        f"by_token {clusters.by_token}"
    )
    base = run("baseline", records, args.chunk, None, args.adopt_every_s, features)
    print(base.line() + "  (by category, no snapshot)", flush=True)
    snaps = Snapshots(log, args.dim, args.snapshot_every_s)
    live = run("live", records, args.chunk, snaps, args.adopt_every_s, features, args.rebuild_us)
    ratio = live.cluster_s / max(base.cluster_s, 1e-12)
    print(live.line() + f"  ({ratio:.1f}x the baseline's clustering time)")
    per_event = live.cluster_s / live.events * 1e6
    print(f"goal <= 20 µs of clustering per event: {'met' if per_event <= 20 else 'NOT met'}")
    leaf_met = 5 <= live.mean_leaf <= 20
    print(f"goal mean leaf 5-20 (live): {'met' if leaf_met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
