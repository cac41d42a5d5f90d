"""contracts.metrics.BulkHistogram: what many observations at once expose is what Prometheus's own
histogram exposes for the same values one by one (the worker's event-to-state latency uses it)."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Histogram

from contracts.metrics import LATENCY_BUCKETS, BulkHistogram


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
