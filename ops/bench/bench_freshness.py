"""Freshness of the online loop, measured on real processes (broker, one worker, one trainer).

    python -m ops.bench.bench_freshness [--trials 50] [--seconds 30] [--rate 100]
    python -m ops.bench.bench_freshness --items 4068792 --dim 64 [--seconds 60] [--rate 100]

1. Event → score: publish one new click for a user, then ask for scores until the answer's
   history includes it; the time from publishing to that answer.
2. Sample → served model: stream events at ``--rate`` for ``--seconds``; each training
   sample's Kafka timestamp against the moment the worker first serves a snapshot whose
   manifest covers its offset (polled on the worker's /healthz every 0.1 s).

With ``--items N --dim D``: delta sync at that table size instead
(:mod:`ops.bench.freshness_scale`).
"""

from __future__ import annotations

import argparse
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import orjson

from contracts.schema import Event, EventType
from contracts.settings import Settings
from ops.bench.freshness_scale import run_scale
from ops.demo import (
    HTTP_PORT,
    TRAINER_ARGS,
    settings_for_demo,
    spawn,
    spawn_worker,
    wait_trained,
)
from serving.manifest import Manifest
from serving.snapshot import version_dir
from streaming.admin import end_offsets, ensure_topics, read_topic
from streaming.client import ScoreClient
from streaming.producer import EventProducer
from streaming.replay import replay
from streaming.sources import read_events
from streaming.synthetic import GeneratorConfig, generate

SHARED = Path(__file__).resolve().parents[3] / "shared/data/taobao_users/UserBehavior.csv"


def served_version() -> int | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/healthz", timeout=5) as resp:
        version = orjson.loads(resp.read())["model_version"]
    return None if version is None else int(version)


def wait_served(timeout_s: float = 300) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            version = served_version()
        except OSError:
            version = None
        if version is not None:
            return version
        time.sleep(0.5)
    raise TimeoutError("no snapshot served")


def event_to_score(settings: Settings, events: list[Event], trials: int) -> np.ndarray:
    counts = Counter(e.user_id for e in events)  # the answer's history is capped at 200
    users = [u for u in dict.fromkeys(e.user_id for e in reversed(events)) if counts[u] < 150]
    users = users[:trials]
    last_ts = max(e.ts for e in events)
    out = []
    with ScoreClient(settings) as client, EventProducer(settings, linger_ms=0) as producer:
        for i, user in enumerate(users):
            before = client.score(user, ["1"])["history_length"]
            event = Event(user, f"fresh-{i}", EventType.CLICK, last_ts + 60 * (i + 1), "1")
            start = time.perf_counter()
            producer.send(event)
            producer.flush()
            while client.score(user, ["1"])["history_length"] == before:
                if time.perf_counter() - start > 30:
                    raise TimeoutError(f"event of user {user} never became visible")
            out.append(time.perf_counter() - start)
    return np.array(out)


def sample_to_model(settings: Settings, snaps: Path, seconds: float, rate: float) -> np.ndarray:
    log = generate(GeneratorConfig(users=300, long_users=0, seed=11))
    events = _events_from(log)[0][: int(rate * seconds)]
    start_offsets = end_offsets(
        settings, settings.topics.samples, settings.topics.events_partitions
    )
    served: Served = []
    with EventProducer(settings, linger_ms=5) as producer:
        t0 = time.perf_counter()
        for i, event in enumerate(events):
            while time.perf_counter() < t0 + i / rate:
                time.sleep(0.001)
                _poll(served, snaps)
            producer.send(event)
        producer.flush()
    deadline = time.time() + 180
    final = end_offsets(settings, settings.topics.samples, settings.topics.events_partitions)
    while time.time() < deadline and not _covers(served, final):
        _poll(served, snaps)
        time.sleep(0.1)
    return _latencies(settings, served, start_offsets)


def _events_from(log: object) -> tuple[list[Event], None]:
    path = Path("twinstream-out/bench/freshness.csv")
    log.write(path)  # type: ignore[attr-defined]
    events, _ = read_events(path, "taobao")
    return events, None


Served = list[tuple[float, int, dict[int, int]]]  # (first seen, version, offsets it covers)


def _poll(served: Served, snaps: Path) -> None:
    """Record a newly served version with its manifest offsets (read now: old ones get pruned)."""
    if served and time.time() - served[-1][0] < 0.1:
        return
    version = served_version()
    if version is not None and (not served or served[-1][1] != version):
        served.append((time.time(), version, _manifest(snaps, version).offsets))


def _manifest(snaps: Path, version: int) -> Manifest:
    return Manifest.from_json((version_dir(snaps, version) / "manifest.json").read_bytes())


def _covers(served: Served, ends: dict[int, int]) -> bool:
    if not served:
        return False
    offsets = served[-1][2]
    return all(offsets.get(p, -1) >= end - 1 for p, end in ends.items() if end)


def _latencies(settings: Settings, served: Served, start: dict[int, int]) -> np.ndarray:
    coverage = [(t, offsets) for t, _, offsets in served]
    out = []
    for record in read_topic(settings, settings.topics.samples, idle_timeout_s=3):
        if record.offset < start.get(record.partition, 0):
            continue
        for t, offsets in coverage:
            if offsets.get(record.partition, -1) >= record.offset:
                out.append(t - record.timestamp / 1000)
                break
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=100.0, help="events/s while streaming")
    parser.add_argument("--out", default="twinstream-out/bench-freshness")
    scale = parser.add_argument_group("production size (ops/bench/freshness_scale.py)")
    scale.add_argument("--items", type=int, help="item rows (full id maps); turns this mode on")
    scale.add_argument("--dim", type=int, default=64)
    scale.add_argument("--categories", type=int, default=9_440)
    scale.add_argument("--delta-every-s", type=float, default=2.0)
    scale.add_argument("--checkpoint-every-s", type=float, default=60.0)
    scale.add_argument("--batch", type=int, default=256, help="sample messages per step")
    scale.add_argument(
        "--keep-out", action="store_true", help="keep the run's checkpoints, state and logs"
    )
    args = parser.parse_args()
    settings = settings_for_demo()
    if args.items:
        run_scale(args, settings)
        return
    ensure_topics(settings)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    snaps = out / f"snapshots-{settings.topics.prefix}"
    procs = [
        spawn_worker(settings, out, snaps),
        spawn(settings, out / "trainer.log", "train", "--snapshot-dir", str(snaps), *TRAINER_ARGS),
    ]
    try:
        events, _ = (
            read_events(SHARED, "taobao")
            if SHARED.exists()
            else _events_from(generate(GeneratorConfig(users=150, long_users=0)))
        )
        time.sleep(8)
        with EventProducer(settings) as producer:
            replay(events, producer, progress=False)
        wait_trained(snaps, settings)  # the replay's backlog first: measure the steady state
        wait_served()
        fresh = event_to_score(settings, events, args.trials)
        p50, p99 = np.percentile(fresh, [50, 99]) * 1000
        print(
            f"event published -> visible in the next score ({fresh.size} trials): "
            f"p50 {p50:.0f} ms, p99 {p99:.0f} ms (goal p99 < 1000 ms)"
        )
        lat = sample_to_model(settings, snaps, args.seconds, args.rate)
        p50, p99 = np.percentile(lat, [50, 99])
        print(
            f"sample published -> served by a model that learnt from it ({lat.size} samples): "
            f"p50 {p50:.1f} s, p99 {p99:.1f} s (goal < 60 s)"
        )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
