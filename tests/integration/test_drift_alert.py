"""The attention traffic drift alert end to end (ARCHITECTURE.md section 8).

An abrupt interest shift (``GeneratorConfig(shift_at=0.5)``) drives the traffic drift over the
alert threshold and fires the alert in Prometheus (the real rules with ``for`` shortened to
2 s); the same stream without the shift raises no alert. The drift is computed in-process by the
real Scorer, serving a real snapshot written by the real trainer code, against a baseline learnt
from the scored traffic before the shift (the drift's clock is the replayed events' time), and
exported on a real /metrics endpoint that Prometheus scrapes. ops/bench/bench_drift.py measures
the same on real processes in wall time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from contracts.schema import Event, EventType
from contracts.settings import Settings
from contracts.topics import TopicNames
from feature_store import MemoryStore, PartitionWorker, decode_samples
from serving.drift import AttentionDrift
from serving.loading import load_snapshot
from serving.requests import ScoreRequest
from serving.scorer import ItemCatalog, ModelHolder, Scorer
from streaming.synthetic import GeneratorConfig
from tests.support.drift import quick_drift, small_dare
from tests.support.events import generated_events
from tests.support.prometheus import (
    SHORT_FOR_S,
    TRAFFIC_DRIFT_ALERT,
    Prometheus,
    binary,
    drift_rule,
    free_port,
    rules_with_short_for,
)
from tests.support.waiting import wait_until
from trainer.config import TrainerConfig
from trainer.online import OnlineTrainer

pytestmark = [pytest.mark.integration]
DRIFT_MODEL = small_dare(n_items=8192, n_categories=256, seq_len=20)
HOUR = 3600.0
# event-time settings: a 12 h window, a baseline learnt over the day before the shift
DRIFT = quick_drift(
    window=3_000, min_rows=300, rows_per_request=3, window_age_s=12 * HOUR, min_users=30,
    baseline_s=0.8 * 24 * HOUR,
)  # fmt: skip


@dataclass
class ShiftWorld:
    """One user-state partition replaying a generated log in event time, a model trained on
    its first 40 %, and a scorer serving that snapshot with drift metrics on ``registry`` whose
    clock is the time of the event being replayed."""

    events: list[Event]
    start_ts: float
    span_s: float
    worker: PartitionWorker
    scorer: Scorer
    negatives: np.ndarray
    offset: int = 0
    now: float = 0.0

    def clock(self) -> float:
        return self.now

    @classmethod
    def build(cls, shift_at: float | None, folder: Path, registry: CollectorRegistry) -> ShiftWorld:
        cfg = GeneratorConfig(
            users=400,
            long_users=0,
            categories=60,
            items_per_category=30,
            mean_sessions=10,
            revisit_prob=0.3,
            shift_at=shift_at,
            seed=1,
        )
        world = cls(
            events=generated_events(cfg, event_ids=True),
            start_ts=cfg.start_ts,
            span_s=cfg.window_days * 86_400,
            worker=PartitionWorker(MemoryStore(), 0),
            scorer=Scorer(ModelHolder(), ItemCatalog()),
            negatives=np.zeros(0),
        )
        world.train(folder, registry)
        return world

    def between(self, lo: float, hi: float) -> list[Event]:
        a, b = self.start_ts + lo * self.span_s, self.start_ts + hi * self.span_s
        return [e for e in self.events if a <= e.ts < b]

    def apply(self, events: list[Event]) -> list[bytes]:
        result = self.worker.process([(self.offset + i, e) for i, e in enumerate(events)])
        self.worker.commit(result)
        self.offset += len(events)
        for e in events:
            self.scorer.catalog.learn(e.item_id, e.category_id)
        return result.samples

    def train(self, folder: Path, registry: CollectorRegistry) -> None:
        history = self.between(-10.0, 0.4)
        blobs = [b for i in range(0, len(history), 500) for b in self.apply(history[i : i + 500])]
        settings = Settings(topics=TopicNames(prefix="drift-"))  # never connects
        config = TrainerConfig(
            model_config=DRIFT_MODEL,
            snapshot_dir=folder,
            device="cpu",
            metrics_window=DRIFT.window,
        )
        trainer = OnlineTrainer(settings, config)
        for i in range(0, len(blobs), 128):
            trainer.learn_arrays(decode_samples(blobs[i : i + 128], DRIFT_MODEL.seq_len))
        written = trainer.snapshot()
        assert written is not None and written.manifest.attention is not None
        holder = self.scorer.holder
        holder.swap(load_snapshot(written.path))
        drift = AttentionDrift(DRIFT, registry, clock=self.clock)
        self.scorer = Scorer(holder, self.scorer.catalog, drift=drift)
        self.negatives = np.array([e.item_id for e in history])

    def live(self, events: list[Event], seed: int) -> int:
        """Score each click (its item + 2 random items, as the trainer's validation rows are
        built) from the state just before it, then apply it; returns the requests made."""
        rng, requests = np.random.default_rng(seed), 0
        for i in range(0, len(events), 200):
            chunk = events[i : i + 200]
            for e in chunk:
                self.now = e.ts
                state = self.worker.store.get(e.user_id)
                if e.type is not EventType.CLICK or state is None:
                    continue
                items = (e.item_id, *map(str, rng.choice(self.negatives, 2)))
                answer = self.scorer.score(ScoreRequest("r", e.user_id, items), state)
                assert "error" not in answer
                requests += 1
            self.apply(chunk)
        return requests


@pytest.mark.slow
@pytest.mark.parametrize("shift_at", [0.5, None], ids=["shift", "no-shift"])
def test_interest_shift_fires_the_traffic_drift_alert(
    tmp_path: Path, shift_at: float | None
) -> None:
    binary("prometheus")
    torch.set_num_threads(1)
    registry = CollectorRegistry()
    world = ShiftWorld.build(shift_at, tmp_path / "snapshots", registry)
    phase = Gauge("drift_test_phase", "Phases of this test scored so far", registry=registry)
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    drift, threshold = drift_rule()
    prometheus = Prometheus(
        tmp_path / "prometheus",
        {"twinstream-worker": f"127.0.0.1:{port}"},
        rules_with_short_for(tmp_path),
    )
    try:
        with prometheus.running() as prom:
            world.live(world.between(0.4, 0.47), seed=1)  # the baseline is learnt and pinned
            assert world.scorer.drift is not None and world.scorer.drift.baseline is not None
            world.live(world.between(0.47, 0.5), seed=3)  # before the shift
            before = _scraped(prom, phase, 1)
            _wait_for_the_rules(prom)
            assert before and peak(prom, drift) < threshold, before
            assert not prom.alerts(TRAFFIC_DRIFT_ALERT)
            world.live(world.between(0.5, 0.7), seed=2)  # after it (or not)
            after = _scraped(prom, phase, 2)
            print(f"shift_at={shift_at}: traffic JS before {_short(before)}, after {_short(after)}")
            if shift_at is None:
                _wait_for_the_rules(prom)
                assert peak(prom, drift) < threshold, after  # at every evaluation of the run
                assert not prom.get("/api/v1/alerts")["alerts"]  # no alert of any kind
            else:
                assert max(prom.query(drift).values()) > threshold, after
                wait_until(
                    lambda: "firing" in prom.alerts(TRAFFIC_DRIFT_ALERT),
                    timeout_s=30,
                    what="the alert to fire",
                )
    finally:
        server.shutdown()
        server.server_close()


def _scraped(prom: Prometheus, phase: Gauge, n: int) -> dict[str, float]:
    """Mark phase ``n`` done; once Prometheus has scraped the mark, the drift it holds is the
    drift of the finished phase."""
    phase.set(n)
    wait_until(
        lambda: prom.query(f"drift_test_phase == {n}"),
        timeout_s=30,
        what=f"a scrape after phase {n}",
    )
    return prom.query("twinstream_attention_drift_js")


def _wait_for_the_rules(prom: Prometheus) -> None:
    """Wait until the alert rules have been evaluated long enough after the last scrape of the
    phase mark for an alert on that scrape's drift to be firing: ``for`` plus one evaluation."""
    (scraped_at,) = prom.query("timestamp(drift_test_phase)").values()
    wait_until(
        lambda: prom.rules_evaluated_after(scraped_at + SHORT_FOR_S + 1.0),
        timeout_s=30,
        what=f"the alert rules evaluated {SHORT_FOR_S + 1} s after the phase's scrape",
    )


def peak(prom: Prometheus, expr: str) -> float:
    """The largest value ``expr`` took over the run (a subquery at 1 s resolution)."""
    return max(prom.query(f"max_over_time(({expr})[1h:1s])").values(), default=0.0)


def _short(series: dict[str, float]) -> dict[str, float]:
    return {key.rsplit("=", 1)[1]: round(value, 4) for key, value in series.items()}
