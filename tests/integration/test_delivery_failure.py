"""A worker whose samples the broker refuses stops, and loses none of them.

The ``samples`` topic is made with ``max.message.bytes`` of 64, smaller than any record batch of
samples, so the broker answers each with RecordTooLarge while ``events`` and the changelog take
theirs. The worker fail-stops at its first batch with a ``kafka`` fault naming the topic and exits
with status 74; no offset of ``events`` is committed and no changelog marker written, so nothing
covers the events whose samples were lost. Once the topic takes samples again (Kafka's default
maximum), a restarted worker writes one positive sample per event of the log: none lost, none
twice, and every event is in the state once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

from contracts.schema import Event
from contracts.settings import Settings
from feature_store import decode_samples
from streaming.admin import admin_client, end_offsets, ensure_topics, read_topic, topic_configs
from streaming.app import APP_NAME
from streaming.failstop import EXIT_STATUS
from streaming.producer import EventProducer
from streaming.replay import replay
from streaming.sources import read_events
from tests.support.data import BehaviourLog
from tests.support.states import assert_each_behaviour_once
from tests.support.workers import WorkerProcess, read_changelog, wait_caught_up

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TINY = "64"  # bytes: under any record batch of samples (61 bytes of batch header, then records)
KAFKA_DEFAULT = "1048588"  # the broker's message.max.bytes, which a topic without override has


def create_samples_topic(settings: Settings, max_message_bytes: str) -> None:
    name = settings.topics.samples
    client = admin_client(settings)
    try:
        configs = topic_configs(settings, name) | {"max.message.bytes": max_message_bytes}
        client.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=settings.topics.all()[name],
                    replication_factor=settings.topics.replication_factor,
                    topic_configs=configs,
                )
            ]
        )
    finally:
        client.close()


def set_max_message_bytes(settings: Settings, value: str) -> None:
    name = settings.topics.samples
    client = admin_client(settings)
    try:
        configs = topic_configs(settings, name) | {"max.message.bytes": value}
        answer = client.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, configs)])
        assert answer == {"topic": {name: "OK"}}, answer
    finally:
        client.close()


def committed_offsets(settings: Settings) -> dict[int, int | None]:
    consumer = KafkaConsumer(
        **settings.kafka_config(),
        group_id=f"{settings.topics.prefix}{APP_NAME}",
        enable_auto_commit=False,
    )
    try:
        n = settings.topics.events_partitions
        return {p: consumer.committed(TopicPartition(settings.topics.events, p)) for p in range(n)}
    finally:
        consumer.close()


def publish(settings: Settings, log: BehaviourLog) -> list[Event]:
    events, _ = read_events(log.path, "taobao")
    ensure_topics(settings)  # every topic but samples, which exists already
    with EventProducer(settings) as producer:
        replay(events, producer, progress=False)
    return events


def test_refused_samples_stop_the_worker_and_a_restart_loses_none(
    settings: Settings, tmp_path: Path, taobao_log: BehaviourLog
) -> None:
    create_samples_topic(settings, TINY)
    events = publish(settings, taobao_log)
    state_dir, log = tmp_path / "w", tmp_path / "w.log"
    with WorkerProcess(settings, state_dir, log) as worker:  # stopped if it does not stop
        assert worker.proc.wait(timeout=180) == EXIT_STATUS
    said = log.read_text()
    assert "FAIL-STOP (kafka)" in said and "MessageSizeTooLargeError" in said
    assert f"a record for {settings.topics.samples}/" in said
    assert "twinstream worker: fail-stop (kafka: " in said

    n = settings.topics.events_partitions
    assert set(committed_offsets(settings).values()) == {None}  # no offset committed
    assert read_changelog(settings)[1] == {}  # no marker covers an event
    assert sum(end_offsets(settings, settings.topics.samples, n).values()) == 0

    set_max_message_bytes(settings, KAFKA_DEFAULT)
    with WorkerProcess(settings, state_dir, log):
        states = wait_caught_up(settings)
        samples = read_topic(settings, settings.topics.samples, idle_timeout_s=5)
    positives = int((decode_samples([r.value for r in samples]).label == 1.0).sum())
    assert positives == len(events)  # one per event: none lost, none twice
    assert_each_behaviour_once(states, events)
