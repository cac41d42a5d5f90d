"""Prometheus metrics of the online trainer, declared in one typed place with an injectable
registry (ARCHITECTURE.md section 8; the worker's are in :mod:`streaming.metrics`).

:class:`TrainerTelemetry` is what :class:`trainer.online.OnlineTrainer` calls: messages consumed,
rows trained, snapshots written, consumer lag. Sample-to-model freshness is the time from a
sample's Kafka timestamp to the snapshot that contains it being written, one observation per
sample message, added in bulk when the snapshot is written (:class:`BulkHistogram`).

>>> from prometheus_client import CollectorRegistry
>>> t = TrainerTelemetry.create(CollectorRegistry())
>>> t.trained(rows=96, seconds=0.05, loss=0.6)
>>> t.metrics.registry.get_sample_value("twinstream_trainer_samples_total")
96.0
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from contracts.metrics import BulkHistogram, set_lag

log = logging.getLogger(__name__)
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FRESHNESS_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
QUALITY = ("auc", "gauc", "logloss")  # manifest metrics exported as twinstream_streaming_*


@dataclass(frozen=True)
class TrainerMetrics:
    registry: CollectorRegistry
    steps: Counter
    samples: Counter  # target rows trained by this process
    messages: Counter  # sample messages consumed
    bad_messages: Counter  # undecodable sample messages skipped
    step_seconds: Histogram  # validate + learn of one step
    loss: Gauge  # moving average of the training loss
    quality: dict[str, Gauge]  # auc, gauc, logloss of the sliding validation window
    window_rows: Gauge
    snapshot_version: Gauge
    snapshot_created: Gauge
    snapshots: Counter
    sample_to_model: BulkHistogram
    consumer_lag: Gauge  # agent="trainer", by partition

    @classmethod
    def create(cls, registry: CollectorRegistry) -> TrainerMetrics:
        """The metrics on ``registry``; loss and quality read NaN until they are known."""
        metrics = cls._declare(registry)
        for gauge in (metrics.loss, *metrics.quality.values()):
            gauge.set(math.nan)
        return metrics

    @classmethod
    def _declare(cls, registry: CollectorRegistry) -> TrainerMetrics:
        r = registry
        return cls(
            registry=r,
            steps=Counter("twinstream_trainer_steps_total", "Optimizer steps", registry=r),
            samples=Counter(
                "twinstream_trainer_samples_total", "Target rows trained (this rank)", registry=r
            ),
            messages=Counter(
                "twinstream_trainer_messages_total", "Sample messages consumed", registry=r
            ),
            bad_messages=Counter(
                "twinstream_trainer_bad_messages_total", "Undecodable sample messages", registry=r
            ),
            step_seconds=Histogram(
                "twinstream_trainer_step_seconds",
                "Progressive validation + learning time of one step",
                buckets=STEP_BUCKETS,
                registry=r,
            ),
            loss=Gauge("twinstream_trainer_loss", "Training loss (moving average)", registry=r),
            quality={
                name: Gauge(
                    f"twinstream_streaming_{name}",
                    f"Streaming {name.upper()} of the sliding progressive-validation window",
                    registry=r,
                )
                for name in QUALITY
            },
            window_rows=Gauge(
                "twinstream_streaming_window_rows", "Rows in the validation window", registry=r
            ),
            snapshot_version=Gauge(
                "twinstream_snapshot_version", "Version of the newest snapshot", registry=r
            ),
            snapshot_created=Gauge(
                "twinstream_snapshot_created_timestamp_seconds",
                "When the newest snapshot was written",
                registry=r,
            ),
            snapshots=Counter("twinstream_snapshots_written_total", "Snapshots", registry=r),
            sample_to_model=BulkHistogram(
                "twinstream_sample_to_model_seconds",
                "Kafka timestamp of a sample to the snapshot containing it being written",
                FRESHNESS_BUCKETS,
                r,
            ),
            consumer_lag=Gauge(
                "twinstream_consumer_lag_messages",
                "End offset minus the consumer position, per assigned partition",
                ["agent", "partition"],
                registry=r,
            ),
        )


class TrainerTelemetry:
    """The trainer loop's hooks, turned into :class:`TrainerMetrics`."""

    def __init__(self, metrics: TrainerMetrics) -> None:
        self.metrics = metrics
        self._pending: list[npt.NDArray[np.float64]] = []  # Kafka times since the last snapshot

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> TrainerTelemetry:
        """A fresh registry by default (several trainers in one process must not collide)."""
        return cls(TrainerMetrics.create(registry or CollectorRegistry()))

    def consumed(self, timestamps_ms: Sequence[int], bad: int) -> None:
        """Sample messages polled (their Kafka timestamps), ``bad`` of them undecodable."""
        self.metrics.messages.inc(len(timestamps_ms))
        self.metrics.bad_messages.inc(bad)
        if len(timestamps_ms):
            self._pending.append(np.asarray(timestamps_ms, dtype=np.float64) / 1000.0)

    def trained(self, rows: int, seconds: float, loss: float) -> None:
        m = self.metrics
        m.steps.inc()
        m.samples.inc(rows)
        m.step_seconds.observe(seconds)
        m.loss.set(loss)

    def snapshot(self, version: int, created: float, quality: dict[str, float | None]) -> None:
        """A snapshot holding everything consumed so far was written at ``created``."""
        m = self.metrics
        m.snapshots.inc()
        m.snapshot_version.set(version)
        m.snapshot_created.set(created)
        for name, gauge in m.quality.items():
            value = quality.get(name)
            gauge.set(math.nan if value is None else value)
        m.window_rows.set(quality.get("window_rows") or 0.0)
        if self._pending:
            ts = np.concatenate(self._pending)
            m.sample_to_model.observe_many(np.maximum(0.0, created - ts))
            self._pending.clear()

    def record_lag(self, lags: Mapping[int, int]) -> None:
        """The trainer's lag per partition it reads (from :class:`trainer.lag.LagWatcher`'s
        thread: Prometheus gauges are thread-safe)."""
        set_lag(self.metrics.consumer_lag, {"trainer": lags})
