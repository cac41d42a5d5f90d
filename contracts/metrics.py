"""Prometheus helpers every part shares: histogram buckets, a histogram observed in bulk
and consumer-group lag.

Labels take closed sets only (agent name, partition number): never a user or item id.

>>> from prometheus_client import CollectorRegistry
>>> gauge = Gauge("lag", "lag", ["agent", "partition"], registry=CollectorRegistry())
>>> set_lag(gauge, {"ingest": {0: 5, 1: 0}})
>>> set_lag(gauge, {"ingest": {1: 2}})  # partition 0 moved away: its series is dropped
>>> sorted((s.labels["partition"], s.value) for s in next(iter(gauge.collect())).samples)
[('1', 2.0)]
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from kafka import KafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
COUNT_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 5_000, 20_000, 100_000)
OFFSETS_TIMEOUT_S = 10.0  # one ask for offsets; kafka-python's own bound is 30 s per request


class BulkHistogram(Collector):
    """A Prometheus histogram that takes many observations at once (numpy, O(buckets))."""

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = np.array([*buckets, math.inf], dtype=np.float64)
        self._counts = np.zeros(self.bounds.size, dtype=np.int64)  # per bucket, not cumulative
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: npt.NDArray[np.float64]) -> None:
        idx = np.searchsorted(self.bounds, values, side="left")  # value ≤ bound → that bucket
        with self._lock:
            self._counts += np.bincount(idx, minlength=self.bounds.size)
            self._sum += float(values.sum())

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            cumulative, total = np.cumsum(self._counts), self._sum
        buckets = [(_bound(b), float(c)) for b, c in zip(self.bounds, cumulative, strict=True)]
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], buckets, total)
        yield family


def _bound(b: float) -> str:
    return "+Inf" if math.isinf(b) else repr(float(b))


class GroupLag:
    """Lag of a consumer group (e.g. a Faust app's): per partition, the end offset minus the
    group's committed offset (its beginning offset while nothing is committed). Blocking
    kafka-python calls: run it off the event loop. The group is only read, never joined.

    ``kafka_config``: where and how to connect (``Settings.kafka_config()``: bootstrap servers,
    TLS and SASL)."""

    def __init__(self, kafka_config: Mapping[str, Any], group_id: str) -> None:
        self.kafka_config, self.group_id = dict(kafka_config), group_id
        self._consumer: KafkaConsumer | None = None

    def sample(
        self, topics: Mapping[str, str], partitions: Iterable[int]
    ) -> dict[str, dict[int, int]]:
        """``topics``: agent name → topic; returns agent → partition → lag. Each ask to the
        broker waits at most ``OFFSETS_TIMEOUT_S`` (then ``KafkaTimeoutError``)."""
        consumer = self._client()
        tps = [TopicPartition(t, p) for t in topics.values() for p in sorted(partitions)]
        if not tps:
            return {}
        ends, starts = partition_offsets(consumer, tps)
        agent_of = {topic: agent for agent, topic in topics.items()}
        out: dict[str, dict[int, int]] = {agent: {} for agent in topics}
        timeout_ms = int(OFFSETS_TIMEOUT_S * 1000)
        for tp in tps:
            committed = consumer.committed(tp, timeout_ms=timeout_ms)
            position = starts[tp] if committed is None else committed
            out[agent_of[tp.topic]][tp.partition] = max(0, ends[tp] - position)
        return out

    def _client(self) -> KafkaConsumer:
        if self._consumer is None:
            self._consumer = KafkaConsumer(
                **self.kafka_config,
                group_id=self.group_id,
                enable_auto_commit=False,
            )
        return self._consumer

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def partition_offsets(
    consumer: KafkaConsumer, tps: Sequence[TopicPartition], timeout_s: float = OFFSETS_TIMEOUT_S
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """End and beginning offsets of ``tps``, each ask bounded by ``timeout_s``: while a
    partition has no leader (a broker away) kafka-python would otherwise wait its request
    timeout, and a caller sampling a gauge would wait with it. Raises ``KafkaTimeoutError``."""
    timeout_ms = int(timeout_s * 1000)
    ends = consumer.end_offsets(list(tps), timeout_ms=timeout_ms)
    return ends, consumer.beginning_offsets(list(tps), timeout_ms=timeout_ms)


def set_lag(gauge: Gauge, lags: Mapping[str, Mapping[int, int]]) -> None:
    """Set ``gauge`` (labels agent, partition) to ``lags`` (agent → partition → lag) and drop
    the series of partitions this process no longer owns instead of keeping their last value."""
    wanted = {
        (a, str(p)): lag for a, by_partition in lags.items() for p, lag in by_partition.items()
    }
    for sample in next(iter(gauge.collect())).samples:
        key = (sample.labels["agent"], sample.labels["partition"])
        if key not in wanted:
            gauge.remove(*key)
    for (agent, partition), lag in wanted.items():
        gauge.labels(agent=agent, partition=partition).set(lag)
