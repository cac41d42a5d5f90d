"""The trainer's lag watcher: the loop hands over what it consumed without ever waiting for the
broker, and the lag is end offset − the next offset to train (against the real broker too)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from contracts.settings import Settings
from models import ModelConfig
from streaming.admin import ensure_topics
from tests.support.waiting import wait_until
from trainer.config import TrainerConfig
from trainer.lag import LagWatcher, TopicOffsets
from trainer.source import KafkaSampleSource
from trainer.telemetry import TrainerTelemetry


class HangingBroker:
    """End offsets that do not come until ``answer`` is set (a partition's leader away)."""

    def __init__(self) -> None:
        self.answer, self.asked = threading.Event(), threading.Event()

    def __call__(self, partitions: list[int]) -> tuple[dict[int, int], dict[int, int]]:
        self.asked.set()
        self.answer.wait()
        return {p: 100 for p in partitions}, {p: 0 for p in partitions}


def test_the_loop_hands_over_its_offsets_while_the_broker_does_not_answer() -> None:
    broker, lags = HangingBroker(), []
    watcher = LagWatcher(broker, lags.append, every_s=0.01)
    watcher.seen({0: 9})
    watcher.start()
    assert broker.asked.wait(timeout=10)  # the watcher's thread is stuck in the broker call
    loop = threading.Thread(target=lambda: [watcher.seen({0: i}) for i in range(10, 1000)])
    loop.start()
    loop.join(timeout=10)
    assert not loop.is_alive()  # the loop went on while the broker hung
    broker.answer.set()
    watcher.close()
    assert lags[0] == {0: 100 - 10}  # the offsets handed over before the ask
    assert watcher.sample_once() == {0: 0}  # then the loop's newest (999, past the end)


def test_a_failed_ask_records_nothing_and_is_tried_again() -> None:
    calls, lags = [], []

    def flaky(partitions: list[int]) -> tuple[dict[int, int], dict[int, int]]:
        calls.append(partitions)
        if len(calls) == 1:
            raise TimeoutError("leader away")
        return {0: 5}, {0: 2}

    watcher = LagWatcher(flaky, lags.append)
    watcher.seen({0: None})
    assert watcher.sample_once() is None and lags == []
    assert watcher.sample_once() == {0: 3}  # nothing trained yet: from the beginning offset


@pytest.mark.integration
def test_lag_against_the_broker_counts_from_the_next_offset_to_train(settings: Settings) -> None:
    ensure_topics(settings)
    topic = settings.topics.samples
    produce(settings, topic, 10)
    offsets = TopicOffsets(settings.kafka_config(), topic)
    lags: list[dict[int, int]] = []
    watcher = LagWatcher(offsets, lags.append)
    try:
        watcher.seen({0: 3, 1: None})
        assert watcher.sample_once() == {0: 6, 1: 0}
        watcher.seen({0: None})
        assert watcher.sample_once() == {0: 10}
    finally:
        offsets.close()


@pytest.mark.integration
def test_the_kafka_source_commits_snapshots_and_reports_lag_without_waiting(
    settings: Settings, tmp_path: Path
) -> None:
    """What it consumed reaches the lag gauge; a snapshot's offsets reach the group (committed
    asynchronously, for other tools' lag monitoring)."""
    ensure_topics(settings)
    produce(settings, settings.topics.samples, 10)
    cfg = TrainerConfig(
        model_config=ModelConfig(n_items=64, n_categories=8),
        snapshot_dir=tmp_path,
        session_timeout_s=6.0,
    )
    source, consumed = KafkaSampleSource(settings, cfg), {}
    telemetry = TrainerTelemetry.create()
    source.start(lambda: consumed)
    try:
        records = wait_until(
            lambda: source.next_batch(10, 0.5, lambda: False), timeout_s=60, what="a batch"
        )
        consumed.update({r.partition: r.offset for r in records if r.offset < 6})
        source.sample_lag(telemetry)  # hands over only: the watcher's thread asks the broker
        gauge = "twinstream_consumer_lag_messages"
        labels = {"agent": "trainer", "partition": "0"}
        lag = wait_until(
            lambda: telemetry.metrics.registry.get_sample_value(gauge, labels),
            timeout_s=30,
            what="the trainer's lag",
            interval_s=0.1,
        )
        assert lag == 4.0  # offsets 6..9 are not trained yet
        source.snapshot_written({0: 5})
        assert wait_until(lambda: committed(settings), timeout_s=30, what="the commit") == 6
    finally:
        source.close()


def produce(settings: Settings, topic: str, n: int) -> None:
    producer = KafkaProducer(**settings.kafka_config())
    for i in range(n):
        producer.send(topic, value=b"%d" % i, partition=0)
    producer.flush()
    producer.close()


def committed(settings: Settings) -> int | None:
    reader = KafkaConsumer(**settings.kafka_config(), group_id=f"{settings.topics.prefix}trainer")
    try:
        return reader.committed(TopicPartition(settings.topics.samples, 0))
    finally:
        reader.close()
