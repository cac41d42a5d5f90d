"""Prometheus metrics of the scorer: requests, latency, reloads, model age and attention drift.

>>> from prometheus_client import CollectorRegistry
>>> m = ScoringMetrics.create(CollectorRegistry())
>>> m.requests.labels(transport="http", outcome="ok").inc()
>>> m.registry.get_sample_value(
...     "twinstream_score_requests_total", {"transport": "http", "outcome": "ok"})
1.0
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from contracts.settings import Settings
from serving.drift import AttentionDrift, DriftConfig

SCORE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class ScoringMetrics:
    registry: CollectorRegistry
    requests: Counter  # by transport (kafka, http) and outcome (ok or an error code)
    latency: Histogram  # model + state read, by transport
    reloads: Counter
    reload_failures: Counter  # by reason
    model_version: Gauge
    model_created: Gauge  # unix time the serving snapshot was written
    model_age: Gauge  # seconds since then, computed at scrape time
    request_to_answer: Histogram  # client sent_at to answer sent, when the client says
    drift: AttentionDrift  # live attention window, pinned baseline and drift gauges

    @classmethod
    def create(
        cls, registry: CollectorRegistry | None = None, drift: DriftConfig | None = None
    ) -> ScoringMetrics:
        r = REGISTRY if registry is None else registry
        created = Gauge(
            "twinstream_model_created_timestamp_seconds",
            "When the serving snapshot was written",
            registry=r,
        )
        age = Gauge(
            "twinstream_model_age_seconds",
            "Seconds since the serving snapshot was written (NaN before the first)",
            registry=r,
        )
        age.set_function(lambda: _age(created))
        return cls(
            registry=r,
            requests=Counter(
                "twinstream_score_requests_total",
                "Score requests",
                ["transport", "outcome"],
                registry=r,
            ),
            latency=Histogram(
                "twinstream_score_seconds",
                "Scoring latency",
                ["transport"],
                buckets=SCORE_BUCKETS,
                registry=r,
            ),
            reloads=Counter("twinstream_model_reloads_total", "Snapshots swapped in", registry=r),
            reload_failures=Counter(
                "twinstream_model_reload_failures_total",
                "Snapshots refused",
                ["reason"],
                registry=r,
            ),
            model_version=Gauge("twinstream_model_version", "Serving snapshot version", registry=r),
            model_created=created,
            model_age=age,
            request_to_answer=Histogram(
                "twinstream_score_request_to_answer_seconds",
                "Request sent to answer sent",
                buckets=SCORE_BUCKETS,
                registry=r,
            ),
            drift=AttentionDrift(drift or DriftConfig.from_settings(Settings.from_env()), r),
        )


def _age(created: Gauge) -> float:
    value = next(iter(created.collect())).samples[0].value
    return time.time() - value if value > 0 else math.nan
