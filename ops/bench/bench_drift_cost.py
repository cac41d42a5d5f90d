"""What attention drift costs a scored request: the scorer with no drift monitor, with one whose
anchor is the serving model, and with one whose anchor is an older snapshot (every request's
sampled candidates scored again by the anchor), interleaved in one run (README "Attention drift").

    python -m ops.bench.bench_drift_cost [--runs 600] [--candidates 100]

The request is bench_scoring's part B: the whole ``serving.scorer.Scorer`` for a real
100,000-behaviour user (recent 200 + its TWIN-V2 clusters) against ``--candidates`` items, on a
200,000-item model; the drift monitor feeds ``TWINSTREAM_DRIFT_ROWS_PER_REQUEST`` (32) rows of
each request to its window. Prints p50 and p99 of each mode and the p99 ratios against the
scorer without drift measured in the same run; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from prometheus_client import CollectorRegistry

from contracts.settings import Settings
from ops.bench.bench_scoring import TAOBAO, long_user_state, percentiles, snapshots
from ops.malloc import tune_malloc
from serving.drift import AttentionDrift, DriftConfig
from serving.metrics import ScoringMetrics
from serving.reload import SnapshotWatcher
from serving.requests import ScoreRequest
from serving.scorer import ItemCatalog, ModelHolder, Scorer

MODES = ("no drift", "drift, anchor serving", "drift, anchor re-scoring")


def run(runs: int, candidates: int) -> dict[str, object]:
    began = time.monotonic()
    state = long_user_state()
    config = replace(TAOBAO, n_items=200_000, n_categories=1_000)
    paths = snapshots(Path(tempfile.mkdtemp()), state, 2, config)  # TWIN-V2
    holder = ModelHolder()
    watcher = SnapshotWatcher(Settings(), holder, ScoringMetrics.create(CollectorRegistry()))
    drift_cfg = DriftConfig.from_settings(Settings.from_env())
    drift_cfg = replace(drift_cfg, baseline_path=None)
    items = tuple(str(i) for i in np.unique(state.log["item"])[:candidates])
    req = ScoreRequest("r", "u", items, tuple("0" for _ in items))
    watcher.load(paths[0])
    older = AttentionDrift(drift_cfg, CollectorRegistry())
    Scorer(holder, ItemCatalog(), drift=older).score(req, state)  # v1: that monitor's anchor
    watcher.load(paths[1])  # then v2 serves: its requests are re-scored by v1
    same = AttentionDrift(drift_cfg, CollectorRegistry())
    scorers = [Scorer(holder, ItemCatalog(), drift=d) for d in (None, same, older)]
    print(f"setup {time.monotonic() - began:.0f} s; {runs} requests per mode, interleaved")
    times: list[list[float]] = [[], [], []]
    for i in range(runs + 20):  # the first 20 rounds warm up
        for k in np.roll(np.arange(3), i % 3):  # each mode first in turn
            start = time.perf_counter()
            scorers[k].score(req, state)
            if i >= 20:
                times[k].append(time.perf_counter() - start)
        if i % 200 == 199:
            print(f"  {i + 1 - 20} rounds, {time.monotonic() - began:.0f} s", flush=True)
    assert same._anchor is not None and same._anchor.version == 2
    assert older._anchor is not None and older._anchor.version == 1
    result: dict[str, object] = {"runs": runs, "candidates": candidates}
    p99_plain = percentiles(times[0])[1]
    for name, samples in zip(MODES, times, strict=True):
        p50, p99 = percentiles(samples)
        print(f"{name:>26}: p50 {p50:.2f} ms  p99 {p99:.2f} ms  p99 ratio {p99 / p99_plain:.2f}x")
        result[name] = {"p50_ms": round(p50, 2), "p99_ms": round(p99, 2)}
        result[f"{name} p99 ratio"] = round(p99 / p99_plain, 2)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=600)
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    tune_malloc()
    torch.set_num_threads(args.threads)
    logging.getLogger("serving.reload").setLevel(logging.ERROR)
    print(json.dumps(run(args.runs, args.candidates)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
