"""The real parts :mod:`ops.bench.bench_drift` runs: a worker and a trainer as processes on fresh
topics of the broker, a Prometheus with the shipped rules scraping both, a paced replay of a
log in a thread and a scoring loop over HTTP.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts.schema import Event
from contracts.settings import Settings
from ops.demo import TRAINER_ARGS
from ops.prometheus.server import PrometheusServer, free_port, rules_file
from streaming.admin import ensure_topics
from streaming.producer import EventProducer

DRIFT_ALERTS = ("TwinstreamAttentionTrafficDrift", "TwinstreamAttentionModelDrift")
STALE_ALERT = "TwinstreamSnapshotStale"


@dataclass(frozen=True)
class Ports:
    http: int = field(default_factory=free_port)
    worker_metrics: int = field(default_factory=free_port)
    trainer_metrics: int = field(default_factory=free_port)
    prometheus: int = field(default_factory=free_port)


class Processes:
    """One worker and one trainer of ``settings`` (fresh topics), logs and state under ``out``;
    ``drift_env`` holds the worker's TWINSTREAM_DRIFT_* settings."""

    def __init__(self, settings: Settings, out: Path, ports: Ports, drift_env: dict[str, str]):
        self.settings, self.out, self.ports = settings, out, ports
        out.mkdir(parents=True, exist_ok=True)
        self.snaps = out / "snapshots"
        self.env = (
            dict(os.environ)
            | drift_env
            | {
                "TWINSTREAM_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
                "TWINSTREAM_TOPIC_PREFIX": settings.topics.prefix,
                "TWINSTREAM_STATE_DIR": str(out / "state"),
                "OMP_NUM_THREADS": "1",
            }
        )
        ensure_topics(settings)
        self.worker = self._spawn(
            "worker",
            "worker",
            "--state-dir", str(out / "state"),
            "--snapshot-dir", str(self.snaps),
            "--http-port", str(ports.http),
            "--metrics-port", str(ports.worker_metrics),
        )  # fmt: skip
        self.trainer: subprocess.Popen[bytes] | None = self.start_trainer()

    def _spawn(self, log: str, *args: str) -> subprocess.Popen[bytes]:
        with open(self.out / f"{log}.log", "ab") as fh:
            return subprocess.Popen(
                [sys.executable, "-m", "ops.cli", *args],
                env=self.env,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )

    def start_trainer(self) -> subprocess.Popen[bytes]:
        return self._spawn(
            "trainer",
            "train",
            "--snapshot-dir", str(self.snaps),
            *TRAINER_ARGS,
            "--metrics-port", str(self.ports.trainer_metrics),
        )  # fmt: skip

    def stop_trainer(self) -> None:
        if self.trainer is not None:
            self.trainer.terminate()
            self.trainer.wait(timeout=60)
            self.trainer = None

    def close(self) -> None:
        self.stop_trainer()
        self.worker.terminate()
        self.worker.wait(timeout=60)

    def served_version(self) -> int | None:
        try:
            answer = http_json(f"http://127.0.0.1:{self.ports.http}/healthz", None)
        except OSError:
            return None
        version = answer.get("model_version")
        return None if version is None else int(version)


def http_json(url: str, body: dict[str, Any] | None, timeout: float = 10) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def prometheus(out: Path, ports: Ports, interval_s: float, for_scale: float) -> PrometheusServer:
    """A started ``prometheus`` scraping the worker and the trainer every ``interval_s`` with
    the shipped rules (``for_scale`` > 1 divides every ``for``)."""
    if shutil.which("prometheus") is None:
        raise SystemExit("bench_drift needs prometheus on PATH (apt-get install prometheus)")
    rules = rules_file(out, lambda s: s / for_scale)
    targets = {
        "twinstream-worker": f"127.0.0.1:{ports.worker_metrics}",
        "twinstream-trainer": f"127.0.0.1:{ports.trainer_metrics}",
    }
    return PrometheusServer(out, targets, rules, interval_s).start()


class PacedReplay(threading.Thread):
    """Sends ``events`` so that event time advances ``speed`` times faster than wall time from
    ``start_ts``; remembers the users and items it sent (for the scoring loop) and when the
    first event at or after ``shift_ts`` went out."""

    def __init__(self, settings: Settings, events: Sequence[Event], speed: float, shift_ts: float):
        super().__init__(daemon=True)
        self.settings, self.events, self.speed, self.shift_ts = settings, events, speed, shift_ts
        self.recent_users: deque[str] = deque(maxlen=300)
        self.recent_items: deque[tuple[str, str]] = deque(maxlen=200)
        self.behaviours: Counter[str] = Counter()
        self.shift_wall: float | None = None
        self.sent = 0
        self.stop = threading.Event()

    def remember(self, events: Sequence[Event]) -> None:
        for e in events:
            self.recent_users.append(e.user_id)
            self.recent_items.append((e.item_id, e.category_id or "0"))
            self.behaviours[e.user_id] += 1

    def run(self) -> None:
        if not self.events:
            return
        start, first_ts = time.monotonic(), self.events[0].ts
        with EventProducer(self.settings) as producer:
            for e in self.events:
                wait = start + (e.ts - first_ts) / self.speed - time.monotonic()
                if wait > 0 and self.stop.wait(wait):
                    break
                producer.send(e)
                if self.shift_wall is None and e.ts >= self.shift_ts:
                    self.shift_wall = time.time()
                self.remember([e])
                self.sent += 1
            producer.flush()


class Scoring:
    """Score requests over HTTP at ``rate`` per second: a user among ``users()`` against
    ``candidates`` items among those the replay sent last."""

    def __init__(self, port: int, replay: PacedReplay, rate: float, candidates: int, seed: int):
        self.url = f"http://127.0.0.1:{port}/score"
        self.replay, self.rate, self.candidates = replay, rate, candidates
        self.rng = random.Random(seed)
        self.answered = self.failed = 0

    def for_seconds(
        self, seconds_: float, users: list[str] | None = None, tick: Any = None
    ) -> None:
        """Score for ``seconds_`` (from ``users`` when given, else recently active users);
        ``tick()`` is called every 5 s."""
        end, next_tick = time.monotonic() + seconds_, time.monotonic()
        period = 1.0 / self.rate
        while (now := time.monotonic()) < end:
            self.one(users)
            if tick is not None and now >= next_tick:
                tick()
                next_tick = now + 5.0
            time.sleep(max(0.0, period - (time.monotonic() - now)))

    def one(self, users: list[str] | None) -> None:
        pool = users or list(self.replay.recent_users)
        items = list(self.replay.recent_items)
        if not pool or not items:
            return
        chosen = self.rng.sample(items, min(self.candidates, len(items)))
        body = {
            "user_id": self.rng.choice(pool),
            "items": [i for i, _ in chosen],
            "categories": [c for _, c in chosen],
        }
        try:
            answer = http_json(self.url, body, timeout=10)
            self.answered += "error" not in answer
            self.failed += "error" in answer
        except OSError:
            self.failed += 1
