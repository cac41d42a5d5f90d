"""Topic administration: create the deployment's topics with their partition counts, replicas
and in-sync replicas, wait for their leaders, read them back."""

from __future__ import annotations

import contextlib
import time

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaConnectionError, KafkaTimeoutError, TopicAlreadyExistsError

from contracts.settings import Settings

COMPACTED = {"cleanup.policy": "compact", "max.message.bytes": str(16 * 1024 * 1024)}


def admin_client(settings: Settings, timeout_s: float = 30.0) -> KafkaAdminClient:
    """Connect, retrying while the broker is still starting."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return KafkaAdminClient(**settings.kafka_config())
        except (KafkaConnectionError, KafkaTimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def ensure_topics(settings: Settings, topics: dict[str, int] | None = None) -> list[str]:
    """Create missing topics (default: all of the deployment's); returns the ones created."""
    wanted = settings.topics.all() if topics is None else topics
    client = admin_client(settings)
    try:
        existing = set(client.list_topics())
        new = [
            NewTopic(
                name,
                num_partitions=n,
                replication_factor=settings.topics.replication_factor,
                topic_configs=topic_configs(settings, name),
            )
            for name, n in wanted.items()
            if name not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                client.create_topics(new)
        wait_for_leaders(settings, wanted)
        return [t.name for t in new]
    finally:
        client.close()


def topic_configs(settings: Settings, name: str) -> dict[str, str]:
    """A topic's settings: the in-sync replicas an ``acks=all`` write needs (all of the
    deployment's topics), compaction (the state changelog), how long ``model-updates`` keeps
    its deltas.

    >>> topic_configs(Settings(), "events")
    {'min.insync.replicas': '1'}
    >>> topic_configs(Settings(), "model-updates")["retention.ms"]
    '3600000'
    """
    configs = {"min.insync.replicas": str(settings.topics.min_insync_replicas)}
    if name == settings.topics.model_updates:  # deltas: bounded, not kept for the default week
        configs["retention.ms"] = str(int(settings.model_updates_retention_s * 1000))
    return configs | COMPACTED if name.endswith("changelog") else configs


def wait_for_leaders(settings: Settings, topics: dict[str, int], timeout_s: float = 30.0) -> None:
    """Block until every partition of ``topics`` has a leader (fresh topics take a moment)."""
    consumer = KafkaConsumer(**settings.kafka_config())
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            consumer._client.cluster.request_update()  # fresh metadata, not the cached view
            consumer.topics()
            cluster = consumer._client.cluster
            ready = all(
                len(cluster.partitions_for_topic(name) or ()) == n
                and all(
                    (cluster.leader_for_partition(TopicPartition(name, p)) or -1) >= 0
                    for p in range(n)
                )
                for name, n in topics.items()
            )
            if ready:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics without leaders after {timeout_s}s: {sorted(topics)}")
            time.sleep(0.2)
    finally:
        consumer.close()


def delete_topics(settings: Settings, names: list[str]) -> None:
    client = admin_client(settings)
    try:
        existing = set(client.list_topics())
        doomed = [n for n in names if n in existing]
        if doomed:
            client.delete_topics(doomed)
    finally:
        client.close()


def read_topic(
    settings: Settings, topic: str, expected: int | None = None, idle_timeout_s: float = 10.0
) -> list[ConsumerRecord]:
    """Read a topic from the beginning with a throw-away consumer (no group, no commits).

    Stops after ``expected`` records, or when nothing new arrived for ``idle_timeout_s``.
    """
    consumer = KafkaConsumer(
        **settings.kafka_config(),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    try:
        partitions = _partitions(consumer, topic)
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[ConsumerRecord] = []
        last_progress = time.monotonic()
        while expected is None or len(records) < expected:
            batch = consumer.poll(timeout_ms=500, max_records=10_000)
            for part in batch.values():
                records.extend(part)
            if batch:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > idle_timeout_s:
                break
        return records
    finally:
        consumer.close()


def _partitions(
    consumer: KafkaConsumer, topic: str, timeout_s: float = 15.0
) -> list[TopicPartition]:
    deadline = time.monotonic() + timeout_s
    while True:
        ids = consumer.partitions_for_topic(topic)
        if ids:
            return [TopicPartition(topic, p) for p in sorted(ids)]
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic!r} has no partitions after {timeout_s}s")
        time.sleep(0.2)


def end_offsets(settings: Settings, topic: str, partitions: int) -> dict[int, int]:
    """The next offset of each partition of ``topic`` (0 for an empty partition)."""
    consumer = KafkaConsumer(**settings.kafka_config())
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()
