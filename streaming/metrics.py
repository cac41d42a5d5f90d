"""Prometheus metrics of the ingest worker, declared in one typed place with an injectable registry.

>>> from prometheus_client import CollectorRegistry
>>> m = IngestMetrics.create(CollectorRegistry())
>>> m.dlq.labels(reason="bad_json").inc()
>>> m.registry.get_sample_value("twinstream_dlq_messages_total", {"reason": "bad_json"})
1.0
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class IngestMetrics:
    registry: CollectorRegistry
    events: Counter  # by outcome: applied, duplicate, skipped, rejected
    dlq: Counter  # by reason
    samples: Counter
    batch_seconds: Histogram
    event_to_state_seconds: Histogram
    assigned_partitions: Gauge
    users: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> IngestMetrics:
        r = REGISTRY if registry is None else registry
        return cls(
            registry=r,
            events=Counter(
                "twinstream_ingest_events_total", "Events by outcome", ["outcome"], registry=r
            ),
            dlq=Counter(
                "twinstream_dlq_messages_total", "Dead-lettered messages", ["reason"], registry=r
            ),
            samples=Counter(
                "twinstream_samples_emitted_total", "Training samples sent", registry=r
            ),
            batch_seconds=Histogram(
                "twinstream_ingest_batch_seconds",
                "Time per ingest batch",
                buckets=LATENCY_BUCKETS,
                registry=r,
            ),
            event_to_state_seconds=Histogram(
                "twinstream_event_to_state_seconds",
                "Kafka append time of an event to its state being committed",
                buckets=LATENCY_BUCKETS,
                registry=r,
            ),
            assigned_partitions=Gauge(
                "twinstream_ingest_assigned_partitions",
                "Partitions of events owned by this worker",
                registry=r,
            ),
            users=Gauge("twinstream_state_users", "Users in this worker's state", registry=r),
        )


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
    request_to_answer: Histogram  # client sent_at to answer sent, when the client says

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> ScoringMetrics:
        r = REGISTRY if registry is None else registry
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
            model_created=Gauge(
                "twinstream_model_created_timestamp_seconds",
                "When the serving snapshot was written",
                registry=r,
            ),
            request_to_answer=Histogram(
                "twinstream_score_request_to_answer_seconds",
                "Request sent to answer sent",
                buckets=SCORE_BUCKETS,
                registry=r,
            ),
        )
