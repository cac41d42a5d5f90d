"""Topic administration: create the deployment's topics with their partition counts."""

from __future__ import annotations

import time

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import NoBrokersAvailable, TopicAlreadyExistsError

from streaming.config import Settings


def admin_client(settings: Settings, timeout_s: float = 30.0) -> KafkaAdminClient:
    """Connect, retrying while the broker is still starting."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
        except NoBrokersAvailable:
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
            NewTopic(name, num_partitions=n, replication_factor=settings.topics.replication_factor)
            for name, n in wanted.items()
            if name not in existing
        ]
        if new:
            try:
                client.create_topics(new)
            except TopicAlreadyExistsError:
                pass
        return [t.name for t in new]
    finally:
        client.close()


def delete_topics(settings: Settings, names: list[str]) -> None:
    client = admin_client(settings)
    try:
        existing = set(client.list_topics())
        doomed = [n for n in names if n in existing]
        if doomed:
            client.delete_topics(doomed)
    finally:
        client.close()
