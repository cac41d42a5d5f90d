"""WorkerGauges: consumer lag of both agents on the active partitions every sample, users and
bytes of the state every STATE_SIZE_EVERY_S; a failing lag read is logged, never raised."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pytest

from contracts.settings import Settings
from streaming.gauges import STATE_SIZE_EVERY_S, WorkerGauges
from streaming.metrics import IngestMetrics
from streaming.partitions import OwnedPartitions
from tests.support.events import event


class FakeLag:
    """GroupLag's part the gauges use: lag 5 on every partition asked for."""

    def __init__(self, fail: bool = False) -> None:
        self.asked: list[tuple[dict[str, str], list[int]]] = []
        self.fail, self.closed = fail, False

    def sample(self, topics: Mapping[str, str], partitions: Iterable[int]) -> dict:  # type: ignore[type-arg]
        self.asked.append((dict(topics), list(partitions)))
        if self.fail:
            raise OSError("broker away")
        return {agent: dict.fromkeys(partitions, 5) for agent in topics}

    def close(self) -> None:
        self.closed = True


def lag(metrics: IngestMetrics, agent: str, partition: int) -> float | None:
    labels = {"agent": agent, "partition": str(partition)}
    return metrics.registry.get_sample_value("twinstream_consumer_lag_messages", labels)


async def test_lag_of_both_agents_on_active_partitions(
    partitions: OwnedPartitions, metrics: IngestMetrics
) -> None:
    topics = Settings().topics
    gauges = WorkerGauges(Settings(), partitions, metrics)
    gauges.lag = FakeLag()  # type: ignore[assignment]
    await partitions.own([0, 1, 2])
    await partitions.pause([1])
    await gauges.sample()
    want = {"ingest": topics.events, "score": topics.score_requests}
    assert gauges.lag.asked == [(want, [0, 2])]  # type: ignore[attr-defined]
    assert lag(metrics, "ingest", 0) == lag(metrics, "score", 2) == 5
    assert lag(metrics, "ingest", 1) is None
    gauges.close()
    assert gauges.lag.closed  # type: ignore[attr-defined]


async def test_users_and_bytes_are_counted_now_and_then(
    partitions: OwnedPartitions, metrics: IngestMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    gauges = WorkerGauges(Settings(), partitions, metrics)
    gauges.lag = FakeLag()  # type: ignore[assignment]
    await partitions.own([0, 1])
    for partition, users in ((0, ["a", "b"]), (1, ["c"])):
        worker = partitions.workers[partition]
        records = [(k, event(float(k), user=u)) for k, u in enumerate(users)]
        worker.commit(worker.process(records))
    clock = [1_000.0]
    monkeypatch.setattr("streaming.gauges.time.monotonic", lambda: clock[0])
    await gauges.sample()
    registry = metrics.registry
    assert registry.get_sample_value("twinstream_state_users") == 3
    state_bytes = registry.get_sample_value("twinstream_state_bytes")
    assert state_bytes is not None and state_bytes > 0
    worker = partitions.workers[0]
    worker.commit(worker.process([(2, event(9.0, user="d"))]))
    clock[0] += STATE_SIZE_EVERY_S - 1
    await gauges.sample()
    assert registry.get_sample_value("twinstream_state_users") == 3  # not yet recounted
    clock[0] += 1
    await gauges.sample()
    assert registry.get_sample_value("twinstream_state_users") == 4


async def test_a_failing_lag_read_is_logged_not_raised(
    partitions: OwnedPartitions, metrics: IngestMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    gauges = WorkerGauges(Settings(), partitions, metrics)
    gauges.lag = FakeLag(fail=True)  # type: ignore[assignment]
    await partitions.own([0])
    await gauges.sample()
    assert "consumer lag not sampled" in caplog.text
    assert metrics.registry.get_sample_value("twinstream_state_users") == 0
