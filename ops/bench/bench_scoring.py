"""Scoring latency: the GSU speed-up of a compressed lifelong sequence, the whole scorer path, and
the pause that hot reloads cause, all measured in one run.

    python -m ops.bench.bench_scoring [--runs 300] [--device cpu|cuda] [--threads 1]
    python -m ops.bench.bench_scoring --items 4068792 --dim 64 [--delta-rows 20000] [--deltas 20]

A. Model level at the issue's shape: TWIN-V2 (recent branch on) scoring 100 candidates that share
   one history of 200 recent behaviours plus 1,000 clusters, dim 64, a Taobao-sized vocabulary
   (4,068,791 items, 9,408 categories); beside the same model given the full uncompressed history
   (``--uncompressed`` behaviours as clusters of size 1).
B. The whole scorer (``serving.scorer.Scorer``: state → request sample → decode → id maps →
   model → answer) for a real 100,000-behaviour user's state (recent 200 + its TWIN-V2 clusters).
C. B again while another thread hot-reloads verified snapshots (``SnapshotWatcher``), one at a
   time, against as many requests right after each reload with none running.
D. With ``--items N --dim D``: B while deltas apply at that table size, against B right after each
   (:mod:`ops.bench.scoring_deltas`).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from prometheus_client import CollectorRegistry

from contracts.schema import Event, EventType
from contracts.settings import Settings
from feature_store import ClusterConfig, StateConfig, UserState
from models import ModelConfig, build_model
from models.batch import Batch
from models.testing import random_batch
from ops.malloc import tune_malloc
from serving.features import FeatureMapper, MapperConfig, RawIds
from serving.metrics import ScoringMetrics
from serving.priority import lower_thread_priority
from serving.reload import SnapshotWatcher
from serving.requests import ScoreRequest
from serving.scorer import ItemCatalog, ModelHolder, Scorer
from serving.snapshot import SnapshotContent, write_snapshot
from streaming.synthetic import GeneratorConfig, generate

MODES = ("twin", "unlimited", "inplace")  # --items: the ways deltas are applied (scoring_deltas)
TAOBAO = ModelConfig(n_items=4_068_791, n_categories=9_408, dim=64, topk=20, twin_v2_recent=True)


def percentiles(samples_s: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.array(samples_s) * 1000, [50, 99])
    return float(p50), float(p99)


def timed(fn: Callable[[], object], runs: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def with_clusters(batch: Batch, n: int, sizes: torch.Tensor, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    cfg_items, cfg_cats = TAOBAO.n_items, TAOBAO.n_categories
    b = batch.size
    return replace(
        batch,
        cluster_item=torch.randint(1, cfg_items, (1, n), generator=g).expand(b, n),
        cluster_category=torch.randint(1, cfg_cats, (1, n), generator=g).expand(b, n),
        cluster_size=sizes.reshape(1, n).expand(b, n),
        cluster_mask=torch.ones(1, n, dtype=torch.bool).expand(b, n),
        cluster_dense=torch.zeros(1, n, 0).expand(b, n, 0),
    )


def model_level(runs: int, uncompressed: int, device: str) -> None:
    model = build_model("twin_v2", TAOBAO).eval().to(device)
    base = random_batch(TAOBAO, 100, 200, 1, seed=1, min_len=200).expand_history(100)
    sizes = torch.randint(1, 101, (1000,), generator=torch.Generator().manual_seed(2)).float()
    compressed = with_clusters(base, 1000, sizes, 3).to(device)
    full = with_clusters(base, uncompressed, torch.ones(uncompressed), 4).to(device)
    results = {}
    for name, batch in (("1,000 clusters", compressed), (f"{uncompressed:,} raw", full)):

        def score(b: Batch = batch) -> object:
            return _sync(model(b), device)

        with torch.inference_mode():
            results[name] = percentiles(timed(score, runs))
    (c50, c99), (f50, f99) = results.values()
    print("A. TWIN-V2 scoring 100 candidates, recent 200 + lifelong, dim 64, Taobao vocabulary")
    for name, (p50, p99) in results.items():
        print(f"   {name:>16}: p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  ({1000 / p50:,.0f} req/s)")
    print(f"   GSU speed-up (uncompressed / clustered): p50 {f50 / c50:.1f}x  p99 {f99 / c99:.1f}x")


def _sync(out: object, device: str) -> object:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out


def long_user_state() -> UserState:
    log = generate(GeneratorConfig(users=0, long_users=1, long_history=100_000, seed=7))
    state_cfg, cluster_cfg = StateConfig(), ClusterConfig()
    state = UserState.empty(state_cfg)
    for i, (item, cat, ts) in enumerate(zip(log.item, log.category, log.ts, strict=True)):
        state.apply(Event("u", str(item), EventType.CLICK, float(ts), str(cat), f"e{i}"), state_cfg)
    state.maybe_recluster(cluster_cfg)
    return state


def snapshots(folder: Path, state: UserState, n: int, config: ModelConfig) -> list[Path]:
    mapper = FeatureMapper(MapperConfig.for_model(config))
    mapper.observe(RawIds(items=state.log["item"], categories=state.log["category"]))
    paths = []
    for version in range(1, n + 1):
        content = SnapshotContent(
            model_name="twin_v2",
            model=build_model("twin_v2", config),
            mapper=mapper,
            topic=None,
            offsets={},
            step=version,
            samples=0,
        )
        paths.append(write_snapshot(folder, version, content).path)
    return paths


def scorer_path(runs: int, reloads: int) -> None:
    state = long_user_state()
    config = replace(TAOBAO, n_items=200_000, n_categories=1_000)
    folder = Path(tempfile.mkdtemp())
    paths = snapshots(folder, state, reloads + 1, config)
    holder, metrics = ModelHolder(), ScoringMetrics.create(CollectorRegistry())
    watcher = SnapshotWatcher(Settings(), holder, metrics)
    watcher.load(paths[0])
    scorer = Scorer(holder, ItemCatalog())
    items = tuple(str(i) for i in np.unique(state.log["item"])[:100])
    req = ScoreRequest("r", "u", items, tuple("0" for _ in items))
    quiet = timed(lambda: scorer.score(req, state), runs)
    during, between, loaded = reload_windows(watcher, paths[1:], lambda: scorer.score(req, state))
    (q50, q99), (d50, d99), (_, b99) = map(percentiles, (quiet, during, between))
    print(
        f"B. whole scorer, 100 candidates, user with {state.total:,} behaviours "
        f"(recent 200 + {len(state.clusters())} clusters):"
    )
    rate = 1 / statistics.mean(quiet)
    print(f"   p50 {q50:.2f} ms  p99 {q99:.2f} ms  ({rate:,.0f} req/s on one thread)")
    print(
        f"C. during {loaded} hot reloads ({len(during)} requests): p50 {d50:.2f} ms  "
        f"p99 {d99:.2f} ms  max {max(during) * 1000:.2f} ms; between them ({len(between)} "
        f"requests): p99 {b99:.2f} ms, max {max(between) * 1000:.2f} ms; p99 ratio "
        f"{d99 / b99:.2f}x, max / p99 between {max(during) * 1000 / b99:.2f}x during reloads, "
        f"{max(between) * 1000 / b99:.2f}x between (goal: no spike > 2x p99)"
    )


def reload_windows(
    watcher: SnapshotWatcher, paths: list[Path], score: Callable[[], object]
) -> tuple[list[float], list[float], int]:
    """Requests timed while each snapshot loads on another thread, and as many right after it
    with no reload running: the two samples alternate, so drift of the machine's speed during
    the run affects both alike. Returns (during, between, snapshots loaded)."""
    during: list[float] = []
    between: list[float] = []
    loaded: list[bool] = []
    for path in paths:
        thread = threading.Thread(target=_load_at_low_priority, args=(watcher, path, loaded))
        thread.start()
        window = []
        while thread.is_alive():
            window += timed(score, 5, warmup=0)
        thread.join()
        during += window
        between += timed(score, len(window), warmup=0)
    return during, between, sum(loaded)


def _load_at_low_priority(watcher: SnapshotWatcher, path: Path, loaded: list[bool]) -> None:
    lower_thread_priority()  # as the watcher's own thread does
    loaded.append(watcher.load(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--uncompressed", type=int, default=10_000)
    parser.add_argument("--reloads", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--default-malloc", action="store_true", help="skip the worker's tuning")
    scale = parser.add_argument_group("deltas at production size (ops/bench/scoring_deltas.py)")
    scale.add_argument("--items", type=int, help="item rows (full id maps); turns this mode on")
    scale.add_argument("--dim", type=int, default=64)
    scale.add_argument("--categories", type=int, default=9_440)
    scale.add_argument("--delta-rows", type=int, default=20_000, help="rows per item table")
    scale.add_argument("--deltas", type=int, default=20)
    scale.add_argument(
        "--gil-share", type=_shares, default=(Settings().delta_gil_share,),
        help="the applying thread's share of the GIL in the default mode (a list: one run each)",
    )  # fmt: skip
    scale.add_argument(
        "--modes", type=lambda text: tuple(text.split(",")), default=MODES,
        help=f"which ways of applying deltas to run, of {','.join(MODES)}",
    )  # fmt: skip
    args = parser.parse_args()
    tuned = not args.default_malloc and tune_malloc()
    torch.set_num_threads(args.threads)
    logging.getLogger("serving.reload").setLevel(logging.ERROR)
    print(
        f"torch {torch.__version__}, device {args.device}, {args.threads} thread(s), "
        f"malloc tuned as in the worker: {tuned}"
    )
    if args.items:
        from ops.bench import scoring_deltas

        scoring_deltas.run(args, long_user_state(), timed)
        return
    model_level(args.runs, args.uncompressed, args.device)
    scorer_path(args.runs, args.reloads)


def _shares(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


if __name__ == "__main__":
    main()
