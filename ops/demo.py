"""The main job, end to end on one machine: broker → worker → trainer → replay → scores.

Starts the local broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` is set), creates fresh topics, starts
one ingest/scoring worker and one online trainer as processes, replays a Taobao-format log, waits
until the trainer has learnt from every sample and the worker serves its latest snapshot, then
asks for scores with explanations and prints them with the streaming metrics.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from contracts.settings import Settings
from ops import broker as broker_mod
from ops.report import ReportConfig, build_report
from serving.manifest import Manifest
from serving.snapshot import latest_snapshot
from streaming.admin import end_offsets, ensure_topics
from streaming.client import ScoreClient
from streaming.producer import EventProducer
from streaming.replay import replay
from streaming.sources import read_events

HTTP_PORT, WORKER_METRICS, TRAINER_METRICS = 8811, 9811, 9812
# a small DARE whose snapshots (weights + Adam moments) stay small enough to write every 5 s
TRAINER_ARGS = (
    "--model",
    "dare",
    "--batch-size",
    "256",
    "--snapshot-every-s",
    "5",
    "--dim",
    "16",
    "--item-capacity",
    "131072",
    "--category-capacity",
    "16384",
)


def settings_for_demo() -> Settings:
    env = dict(os.environ)
    if not env.get("KAFKA_BOOTSTRAP_SERVERS"):
        cfg = broker_mod.BrokerConfig.from_env()
        pids = ", ".join(map(str, broker_mod.start(cfg)))
        print(f"[1/6] Kafka broker running (pid {pids}) on {cfg.bootstrap}")
        env["TWINSTREAM_BOOTSTRAP_SERVERS"] = cfg.bootstrap
    env["TWINSTREAM_TOPIC_PREFIX"] = f"demo-{int(time.time())}-"
    return Settings.from_env(env)


def spawn(settings: Settings, log: Path, *args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ) | {
        "TWINSTREAM_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "TWINSTREAM_TOPIC_PREFIX": settings.topics.prefix,
    }
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ops.cli", *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def spawn_worker(
    settings: Settings, out: Path, snaps: Path, *extra: str
) -> subprocess.Popen[bytes]:
    """A worker serving HTTP on HTTP_PORT, its state and log under ``out``."""
    return spawn(
        settings,
        out / "worker.log",
        "worker",
        "--state-dir",
        str(out / "state"),
        "--snapshot-dir",
        str(snaps),
        "--http-port",
        str(HTTP_PORT),
        *extra,
    )


def run_demo(data: Path, out: Path, limit: int | None) -> int:
    settings = settings_for_demo()
    ensure_topics(settings)
    out.mkdir(parents=True, exist_ok=True)
    snaps = out / f"{settings.topics.prefix}snapshots"  # per run: never resume another run's
    worker = spawn_worker(settings, out, snaps, "--metrics-port", str(WORKER_METRICS))
    trainer = spawn(
        settings,
        out / "trainer.log",
        "train",
        "--snapshot-dir",
        str(snaps),
        *TRAINER_ARGS,
        "--metrics-port",
        str(TRAINER_METRICS),
        "--snapshot-every-steps",
        "20",
    )
    print(
        f"[2/6] worker (HTTP 127.0.0.1:{HTTP_PORT}, metrics :{WORKER_METRICS}) and trainer "
        f"started; logs in {out}"
    )
    try:
        return _loop(settings, data, snaps, limit)
    finally:
        for proc in (worker, trainer):
            proc.terminate()
        for proc in (worker, trainer):
            proc.wait(timeout=60)


def _loop(settings: Settings, data: Path, snaps: Path, limit: int | None) -> int:
    events, report = read_events(data, "taobao")
    print(f"[3/6] read {data}: {report.summary()}")
    time.sleep(8)  # let the worker join the group and take its partitions
    with EventProducer(settings) as producer:
        stats = replay(events, producer, limit=limit)
    print(f"      replayed {stats.sent} events ({stats.rate:,.0f} events/s)")
    manifest = wait_trained(snaps, settings)
    m = {k: float("nan") if v is None else v for k, v in manifest.metrics.items()}
    print(
        f"[4/6] trainer wrote snapshot v{manifest.version} after {manifest.samples:,} samples; "
        f"streaming AUC {m.get('auc', float('nan')):.4f}, GAUC {m.get('gauc', float('nan')):.4f}, "
        f"logloss {m.get('logloss', float('nan')):.4f} (progressive validation, last window)"
    )
    users = list(dict.fromkeys(e.user_id for e in reversed(events[: stats.sent])))[:3]
    candidates = list(dict.fromkeys(e.item_id for e in events[: stats.sent]))[-20:]
    with ScoreClient(settings) as client:
        for user in users:
            _show(client.score(user, candidates, explain=True, timeout=30))
    html = build_report(ReportConfig(snapshot_dir=snaps, out=snaps.parent / "report.html"))
    print(
        f"[6/6] report with plots: {html}; while they ran, the worker served "
        f"http://127.0.0.1:{WORKER_METRICS}/metrics and POST :{HTTP_PORT}/score, the trainer "
        f":{TRAINER_METRICS}/metrics"
    )
    return 0


def wait_trained(snaps: Path, settings: Settings, timeout_s: float = 600) -> Manifest:
    """Wait until the samples topic stopped growing and the newest snapshot covers all of it."""
    deadline = time.monotonic() + timeout_s
    last_ends: dict[int, int] = {}
    while time.monotonic() < deadline:
        time.sleep(3)
        ends = end_offsets(settings, settings.topics.samples, settings.topics.events_partitions)
        path = latest_snapshot(snaps)
        if path is None or ends != last_ends:
            last_ends = ends
            continue
        manifest = Manifest.from_json((path / "manifest.json").read_bytes())
        if all(manifest.offsets.get(p, -1) >= end - 1 for p, end in ends.items() if end):
            return manifest
    raise TimeoutError("the trainer did not catch up with the samples")


def _show(answer: dict[str, Any]) -> None:
    if "error" in answer:
        print(f"      error: {answer['error']}")
        return
    ranked = sorted(zip(answer["items"], answer["scores"], strict=True), key=lambda p: -p[1])
    top = ", ".join(f"{item}:{score:.3f}" for item, score in ranked[:5])
    print(
        f"[5/6] user {answer['user_id']} (history {answer['history_length']}, "
        f"model v{answer['model_version']}): top items {top}"
    )
    for b in (answer.get("explanations") or [[]])[0][:3]:
        print(
            f"      attended item {b['item']} (category {b['category']}) weight {b['weight']:.3f}"
        )
