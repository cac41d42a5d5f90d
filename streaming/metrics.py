"""Prometheus metrics of the worker's ingest, declared in one typed place with an injectable
registry (ARCHITECTURE.md section 8; the scorer's are in :mod:`serving.metrics`, the trainer's in
:mod:`trainer.telemetry`).

Labels take closed sets only (outcome, reason, transport, agent, partition number, statistic):
never a user id, an item id or free text, so the number of series stays bounded.

>>> from prometheus_client import CollectorRegistry
>>> m = IngestMetrics.create(CollectorRegistry())
>>> m.dlq.labels(reason="bad_json").inc()
>>> m.registry.get_sample_value("twinstream_dlq_messages_total", {"reason": "bad_json"})
1.0
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from contracts.metrics import COUNT_BUCKETS, LATENCY_BUCKETS, BulkHistogram

if TYPE_CHECKING:
    from feature_store import StateStore, UserState

log = logging.getLogger(__name__)
SEQUENCE_BUCKETS = (0, 1, 5, 10, 20, 50, 100, 150, 199, 200, 500, 1_000)
STATES_OBSERVED_PER_BATCH = 64  # touched users of a partition batch fed to the state histograms


@dataclass(frozen=True)
class IngestMetrics:
    registry: CollectorRegistry
    events: Counter  # by outcome: applied, duplicate, skipped, rejected
    dlq: Counter  # by reason
    samples: Counter
    batch_seconds: Histogram
    event_to_state_seconds: BulkHistogram  # a batch's events observed at once
    assigned_partitions: Gauge
    users: Gauge
    state_bytes: Gauge
    consumer_lag: Gauge  # by agent (ingest, score) and partition
    routed: Counter  # by agent (ingest, score): records sent on to their owner's partition
    user_sessions: Histogram  # sessions of a touched user
    session_events: Histogram  # behaviours in a touched user's current session
    recent_length: Histogram  # recent-sequence length of a touched user
    cluster_count: Histogram  # TWIN-V2 clusters of a touched user
    healthy: Gauge  # 1, or 0 once a fault stopped the worker (streaming.failstop)
    fatal_errors: Counter  # by kind (streaming.failstop.FAULT_KINDS)

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
            event_to_state_seconds=BulkHistogram(
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
            users=Gauge(
                "twinstream_state_users",
                "Users in this worker's state (counted every state_size_every_s)",
                registry=r,
            ),
            state_bytes=Gauge(
                "twinstream_state_bytes",
                "Bytes of this worker's RocksDB state folders on disk",
                registry=r,
            ),
            consumer_lag=Gauge(
                "twinstream_consumer_lag_messages",
                "End offset minus the consumer group's committed offset, per owned partition",
                ["agent", "partition"],
                registry=r,
            ),
            routed=Counter(
                "twinstream_routed_records_total",
                "Records whose body's user another partition owns, sent on to that partition",
                ["agent"],
                registry=r,
            ),
            user_sessions=Histogram(
                "twinstream_user_sessions",
                "Sessions of a user whose state a batch touched (sampled per batch)",
                buckets=COUNT_BUCKETS,
                registry=r,
            ),
            session_events=Histogram(
                "twinstream_session_events",
                "Behaviours in the current session of a touched user (sampled per batch)",
                buckets=COUNT_BUCKETS,
                registry=r,
            ),
            recent_length=Histogram(
                "twinstream_recent_sequence_length",
                "Recent-sequence length of a touched user (sampled per batch)",
                buckets=SEQUENCE_BUCKETS,
                registry=r,
            ),
            cluster_count=Histogram(
                "twinstream_cluster_sequence_length",
                "TWIN-V2 clusters of a touched user (sampled per batch)",
                buckets=SEQUENCE_BUCKETS,
                registry=r,
            ),
            healthy=Gauge(
                "twinstream_worker_healthy",
                "1 while the worker applies events; 0 once a fault stopped it (it exits soon)",
                registry=r,
            ),
            fatal_errors=Counter(
                "twinstream_worker_fatal_errors_total",
                "Faults that stopped the worker, by kind: state_write, kafka, other",
                ["kind"],
                registry=r,
            ),
        )

    def observe_states(self, states: Iterable[UserState], recent_length: int) -> None:
        """Sessions, current-session length, recent and cluster sequence lengths of the first
        ``STATES_OBSERVED_PER_BATCH`` touched users (a sample: the cost stays per batch)."""
        for state in itertools.islice(states, STATES_OBSERVED_PER_BATCH):
            sessions = state.log["session"]
            self.user_sessions.observe(state.session_count)
            self.session_events.observe(_last_run(sessions))
            self.recent_length.observe(min(len(sessions), recent_length))
            self.cluster_count.observe(state.cluster_count)


def _last_run(sorted_values: np.ndarray, tail: int = 4_096) -> int:
    """How many trailing entries of a non-decreasing array equal its last one. Searches the
    last ``tail`` entries first: a searchsorted over a strided field view copies it whole.

    >>> _last_run(np.array([0, 0, 1, 1, 1])), _last_run(np.array([], dtype=np.int64))
    (3, 0)
    """
    n = len(sorted_values)
    if n == 0:
        return 0
    for window in (min(n, tail), n):
        part = np.ascontiguousarray(sorted_values[n - window :])
        run = window - int(part.searchsorted(part[-1], "left"))
        if run < window or window == n:
            return run
    return n


def count_users(stores: Iterable[StateStore]) -> int:
    """Users in ``stores`` (reads every user key: call it now and then, off the event loop)."""
    return sum(sum(1 for _ in store.users()) for store in stores)


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (RocksDB's SST files, logs and manifests)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # removed meanwhile (compaction)
                continue
    return total
