"""contracts.metrics: BulkHistogram exposes for many observations at once what Prometheus's own
histogram exposes for the same values one by one (the worker's event-to-state latency uses it);
the offsets the lag gauges ask for are bounded in time."""

from __future__ import annotations

import time

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaTimeoutError
from prometheus_client import CollectorRegistry, Histogram

from contracts.metrics import LATENCY_BUCKETS, BulkHistogram, partition_offsets
from contracts.settings import Settings
from streaming.admin import ensure_topics


def test_bulk_observations_expose_what_one_by_one_observations_expose() -> None:
    rng = np.random.default_rng(7)
    values = np.concatenate(
        [rng.exponential(0.3, 5_000), np.array([0.0, *LATENCY_BUCKETS, 1e9]), np.zeros(3)]
    )
    bulk_registry, plain_registry = CollectorRegistry(), CollectorRegistry()
    bulk = BulkHistogram("lag_seconds", "lag", LATENCY_BUCKETS, bulk_registry)
    plain = Histogram("lag_seconds", "lag", buckets=LATENCY_BUCKETS, registry=plain_registry)
    for part in np.array_split(values, 7):  # several batches
        bulk.observe_many(part)
    for value in values:
        plain.observe(float(value))
    for bound in [*map(str, LATENCY_BUCKETS), "+Inf"]:
        labels = {"le": bound}
        got = bulk_registry.get_sample_value("lag_seconds_bucket", labels)
        assert got == plain_registry.get_sample_value("lag_seconds_bucket", labels), bound
    count = bulk_registry.get_sample_value("lag_seconds_count")
    assert count == plain_registry.get_sample_value("lag_seconds_count") == values.size
    total = bulk_registry.get_sample_value("lag_seconds_sum")
    assert np.isclose(total, plain_registry.get_sample_value("lag_seconds_sum"), rtol=1e-12)


@pytest.mark.integration
def test_asking_offsets_of_a_partition_without_a_leader_fails_within_the_bound(
    settings: Settings,
) -> None:
    """A partition no broker leads (here: one the topic does not have; a broker away looks the
    same) makes kafka-python wait its 30 s request timeout unless bounded: the gauges' samples
    must give up after ``timeout_s`` instead."""
    ensure_topics(settings, {settings.topics.events: 2})
    consumer = KafkaConsumer(**settings.kafka_config(), enable_auto_commit=False)
    try:
        present = [TopicPartition(settings.topics.events, p) for p in (0, 1)]
        ends, starts = partition_offsets(consumer, present, timeout_s=10.0)
        assert ends == starts == dict.fromkeys(present, 0)
        began = time.monotonic()
        with pytest.raises(KafkaTimeoutError):
            partition_offsets(consumer, [TopicPartition(settings.topics.events, 9)], 1.0)
        assert time.monotonic() - began < 5.0
    finally:
        consumer.close()
