"""Detection benchmark of the attention drift alerts, on real processes (README "Attention drift").

    python -m ops.bench.bench_drift --shift-log A.csv --control-log B.csv --shift-at TS \\
        [--speed 60] [--rate 20] [--pre-shift-s 200] [--post-shift-s 300] [--baseline-s 100]

Each Taobao-format log runs on fresh topics of the broker (``KAFKA_BOOTSTRAP_SERVERS``) through
one worker and one online trainer (``twinstream worker`` / ``twinstream train``), with a
Prometheus (``prometheus`` on PATH) evaluating the shipped ``ops/prometheus/alerts.yml``:

1. warm-up: the events before ``TS - pre_shift_s × speed`` as fast as possible, until the
   trainer has learnt them all and the worker serves its snapshot;
2. live: the rest of the log paced at ``speed`` event seconds per wall second, and ``rate``
   score requests per second over HTTP (a recently active user against ``--candidates`` items
   among the last 200 replayed: what is trending now); the drift baseline is learnt over
   ``baseline_s`` and pinned before TS;
3. shift log: until a drift alert fires or ``post_shift_s`` after the first event at TS went
   out; the delay is from that event to the alert firing in Prometheus;
4. control log: the same stretch, then ``thin_s`` where requests come from fewer and fewer users
   (60 down to 15) with the longest histories, then ``quiet_s`` without requests (the window
   must empty and the drift series go absent), then the trainer is stopped while events keep
   flowing: the stale-snapshot alert must fire (``stale_limit_s`` at most).

Drift alerts counted on the control are every episode of ``TwinstreamAttentionTrafficDrift``
or ``TwinstreamAttentionModelDrift`` firing. Progress every 5 s; the timeline of every gauge
goes to ``OUT/<run>/timeline.jsonl``; the last line is one JSON object::

    {"shift_detected": bool, "detection_delay_s": float|null, "control_alerts": int,
     "stale_alert_on_stopped_trainer": bool, ...}

with, as the ratio against the baseline measured in the same run, ``separation``: the largest
traffic drift after the shift over the largest on the control (peaks per phase are in the line).

``twinstream generate A.csv --users 2000 --long-users 0 --shift-at 0.5 --seed S`` (and the same
without ``--shift-at`` for B) writes such a pair; TS is then 1511740800 (start + 7 days).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts.settings import Settings
from ops.bench.drift_world import (
    DRIFT_ALERTS,
    STALE_ALERT,
    PacedReplay,
    Ports,
    Processes,
    Scoring,
    prometheus,
)
from ops.demo import wait_trained
from ops.prometheus.server import PrometheusServer
from streaming.producer import EventProducer
from streaming.sources import read_events


@dataclass(frozen=True)
class BenchConfig:
    shift_at: float  # unix seconds (event time) where the shifted traffic starts
    speed: float = 60.0  # event seconds per wall second in the live part
    rate: float = 20.0  # score requests per second
    candidates: int = 8
    pre_shift_s: float = 200.0  # wall seconds of live traffic before TS
    post_shift_s: float = 300.0  # the shift must be detected within this (the goal)
    baseline_s: float = 100.0  # TWINSTREAM_DRIFT_BASELINE_S of the worker
    thin_s: float = 90.0
    quiet_s: float = 170.0
    stale_limit_s: float = 150.0
    interval_s: float = 5.0  # Prometheus scrape and evaluation
    for_scale: float = 1.0  # > 1 divides the rules' ``for`` (then say so beside the figures)
    seed: int = 0
    out: Path = Path("twinstream-out/bench_drift")


@dataclass
class Run:
    """One log's run: its processes, Prometheus, replay, scoring and what was seen."""

    name: str
    cfg: BenchConfig
    procs: Processes
    prom: PrometheusServer
    replay: PacedReplay
    scoring: Scoring
    phase: str = "warm-up"
    fired: dict[str, list[float]] = field(default_factory=dict)  # alert -> firing starts
    peak: dict[str, float] = field(default_factory=dict)  # phase -> largest traffic JS seen
    mix_peak: dict[str, float] = field(default_factory=dict)  # phase -> largest drift_mix_js
    _firing: set[str] = field(default_factory=set)
    _t0: float = field(default_factory=time.time)

    def tick(self) -> None:
        """Poll Prometheus: alerts that started firing, the drift gauges; print and log."""
        now = time.time()
        firing = self.prom.firing()
        for name in firing - self._firing:
            self.fired.setdefault(name, []).append(now)
        self._firing = firing
        traffic = self.prom.query("twinstream_attention_drift_js", by="statistic")
        model = self.prom.query("twinstream_attention_model_drift_js", by="statistic")
        noise = self.prom.query("twinstream_attention_drift_noise_js", by="statistic")
        mix = self.prom.query("twinstream_attention_drift_mix_js", by="statistic")
        gauges = {
            g: next(iter(self.prom.query(f"twinstream_attention_{g}").values()), None)
            for g in ("window_rows", "window_users", "drift_matched_users", "baseline_learning")
        }
        row = {
            "t": round(now - self._t0, 1),
            "phase": self.phase,
            "answered": self.scoring.answered,
            "failed": self.scoring.failed,
            "events": self.replay.sent,
            "traffic_js": traffic,
            "model_js": model,
            "noise_js": noise,
            "mix_js": mix,
            **gauges,
            "firing": sorted(firing),
        }
        with open(self.procs.out / "timeline.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        top = max(traffic.items(), key=lambda kv: kv[1], default=("-", float("nan")))
        if traffic:
            self.peak[self.phase] = max(self.peak.get(self.phase, 0.0), top[1])
            self.mix_peak[self.phase] = max(self.mix_peak.get(self.phase, 0.0), *mix.values(), 0.0)
        mtop = max(model.values(), default=float("nan"))
        print(
            f"[{self.name} {row['t']:6.0f}s {self.phase:>9}] events {self.replay.sent:,} "
            f"answers {self.scoring.answered:,} (failed {self.scoring.failed}) rows "
            f"{gauges['window_rows']} users {gauges['window_users']} (matched "
            f"{gauges['drift_matched_users']}) learning "
            f"{gauges['baseline_learning']} traffic JS max {top[1]:.3f} ({top[0]}) model JS "
            f"max {mtop:.3f} noise max {max(noise.values(), default=float('nan')):.3f} mix max "
            f"{max(mix.values(), default=float('nan')):.3f} firing {sorted(firing) or '-'}",
            flush=True,
        )

    def drift_episodes(self, since: float = 0.0) -> int:
        return sum(t >= since for a in DRIFT_ALERTS for t in self.fired.get(a, []))


def start(name: str, log: Path, cfg: BenchConfig) -> Run:
    events, report = read_events(log, "taobao")
    print(f"[{name}] {log}: {report.summary()}", flush=True)
    split = cfg.shift_at - cfg.pre_shift_s * cfg.speed
    warm = [e for e in events if e.ts < split]
    live = [e for e in events if e.ts >= split]
    env = Settings.from_env()
    settings = Settings.from_env(
        {"TWINSTREAM_TOPIC_PREFIX": f"bench-drift-{name}-{os.getpid()}-{int(time.time())}-",
         "TWINSTREAM_BOOTSTRAP_SERVERS": env.bootstrap_servers}
    )  # fmt: skip
    out = cfg.out / f"{name}-seed{cfg.seed}-{os.getpid()}-{int(time.time())}"
    ports = Ports()
    drift_env = {"TWINSTREAM_DRIFT_BASELINE_S": str(cfg.baseline_s)}
    procs = Processes(settings, out, ports, drift_env)
    prom = prometheus(out / "prometheus", ports, cfg.interval_s, cfg.for_scale)
    replay = PacedReplay(settings, live, cfg.speed, cfg.shift_at)
    scoring = Scoring(ports.http, replay, cfg.rate, cfg.candidates, cfg.seed)
    run = Run(name, cfg, procs, prom, replay, scoring)
    try:
        warm_up(run, warm)
    except BaseException:
        _close(run)
        raise
    print(f"[{name}] {len(live):,} live events at {cfg.speed:g}x", flush=True)
    replay.start()
    return run


def warm_up(run: Run, warm: list[Any]) -> None:
    """Send the warm-up events at once; wait until the trainer learnt them and the worker
    serves a snapshot."""
    time.sleep(8)  # the worker joins its group
    began = time.monotonic()
    with EventProducer(run.procs.settings) as producer:
        producer.send_many(warm)
        producer.flush()
    run.replay.remember(warm)
    manifest = wait_trained(run.procs.snaps, run.procs.settings)
    while run.procs.served_version() is None:
        time.sleep(1)
    print(
        f"[{run.name}] warm-up: {len(warm):,} events, trainer at v{manifest.version} "
        f"({manifest.samples:,} samples) in {time.monotonic() - began:.0f}s",
        flush=True,
    )


def shift_run(log: Path, cfg: BenchConfig) -> dict[str, Any]:
    run = start("shift", log, cfg)
    try:
        run.phase = "pre-shift"
        run.scoring.for_seconds(cfg.pre_shift_s, tick=run.tick)
        while run.replay.shift_wall is None:
            run.scoring.for_seconds(1.0, tick=run.tick)
        shift_wall = run.replay.shift_wall
        false_before = run.drift_episodes()
        run.phase = "shifted"
        while time.time() < shift_wall + cfg.post_shift_s and not run.drift_episodes(shift_wall):
            run.scoring.for_seconds(2.0, tick=run.tick)
        run.tick()
        starts = [t for a in DRIFT_ALERTS for t in run.fired.get(a, []) if t >= shift_wall]
        delay = min(starts) - shift_wall if starts else None
        return {
            "shift_detected": delay is not None and delay <= cfg.post_shift_s,
            "detection_delay_s": None if delay is None else round(delay, 1),
            "alerts_before_shift": false_before,
            "pre_shift_peak_js": round(run.peak.get("pre-shift", 0.0), 4),
            "shift_peak_js": round(run.peak.get("shifted", 0.0), 4),
            "first_alert": None if not starts else _first(run, min(starts)),
        }
    finally:
        _close(run)


def control_run(log: Path, cfg: BenchConfig) -> dict[str, Any]:
    run = start("control", log, cfg)
    try:
        run.phase = "normal"
        run.scoring.for_seconds(cfg.pre_shift_s + cfg.post_shift_s, tick=run.tick)
        run.phase = "thinning"
        longest = [u for u, _ in run.replay.behaviours.most_common(60)]
        steps = 6
        for i in range(steps):
            keep = max(15, 60 - i * (60 - 15) // (steps - 1))
            run.scoring.for_seconds(cfg.thin_s / steps, users=longest[:keep], tick=run.tick)
        run.phase = "quiet"
        end = time.monotonic() + cfg.quiet_s
        while time.monotonic() < end:
            run.tick()
            time.sleep(5)
        rows = next(iter(run.prom.query("twinstream_attention_window_rows").values()), None)
        absent = not run.prom.query("twinstream_attention_drift_js")
        drift_alerts = run.drift_episodes()
        run.phase = "stale"
        run.procs.stop_trainer()
        stopped = time.time()
        while time.time() < stopped + cfg.stale_limit_s and STALE_ALERT not in run.fired:
            run.scoring.for_seconds(2.0, tick=run.tick)
        stale_at = run.fired.get(STALE_ALERT, [None])[-1]
        stale_delay = None if stale_at is None or stale_at < stopped else stale_at - stopped
        return {
            "control_alerts": drift_alerts,
            "control_peak_js": round(max(run.peak.values(), default=0.0), 4),
            "control_peak_js_by_phase": {k: round(v, 4) for k, v in run.peak.items()},
            "control_mix_peak_by_phase": {k: round(v, 4) for k, v in run.mix_peak.items()},
            "quiet_window_rows": rows,
            "quiet_drift_absent": absent,
            "stale_alert_on_stopped_trainer": stale_delay is not None,
            "stale_delay_s": None if stale_delay is None else round(stale_delay, 1),
            "stale_firing_before_stop": [t for t in run.fired.get(STALE_ALERT, []) if t < stopped],
        }
    finally:
        _close(run)


def _first(run: Run, t: float) -> str:
    return next(a for a in DRIFT_ALERTS if t in run.fired.get(a, []))


def _close(run: Run) -> None:
    run.replay.stop.set()
    if run.replay.ident is not None:  # started
        run.replay.join(timeout=30)
    run.procs.close()
    run.prom.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shift-log", type=Path, required=True)
    p.add_argument("--control-log", type=Path, required=True)
    p.add_argument("--shift-at", type=float, required=True, help="unix seconds, event time")
    d = BenchConfig(shift_at=0.0)
    for name in ("speed", "rate", "pre_shift_s", "post_shift_s", "baseline_s", "thin_s",
                 "quiet_s", "stale_limit_s", "interval_s", "for_scale"):  # fmt: skip
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(d, name))
    p.add_argument("--candidates", type=int, default=d.candidates)
    p.add_argument("--seed", type=int, default=d.seed, help="the scoring loop's choices")
    p.add_argument("--out", type=Path, default=d.out)
    p.add_argument("--only", choices=["shift", "control"], help="run one of the two logs")
    args = vars(p.parse_args(argv))
    shift_log, control_log, only = args.pop("shift_log"), args.pop("control_log"), args.pop("only")
    cfg = BenchConfig(**args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stops the children (finally)
    began = time.monotonic()
    result: dict[str, Any] = {
        "shift_detected": False,
        "detection_delay_s": None,
        "control_alerts": 0,
        "stale_alert_on_stopped_trainer": False,
    }
    if only in (None, "shift"):
        result |= shift_run(shift_log, cfg)
    if only in (None, "control"):
        result |= control_run(control_log, cfg)
    if result.get("shift_peak_js") and result.get("control_peak_js"):
        result["separation"] = round(result["shift_peak_js"] / result["control_peak_js"], 2)
    result |= {
        "wall_s": round(time.monotonic() - began),
        "seed": cfg.seed,
        "for_scale": cfg.for_scale,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
