"""Shared fixtures: a real Kafka broker for the session, fresh topic names per test.

The broker comes from ``KAFKA_BOOTSTRAP_SERVERS`` when set, else from testcontainers when a
Docker engine answers, else from the project's own jar broker (``twinstream broker start``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from contracts.settings import Settings
from ops import broker as local_broker


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    done = subprocess.run(["docker", "info"], capture_output=True, timeout=10)
    return done.returncode == 0


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    cfg = local_broker.BrokerConfig.from_env()
    was_running = local_broker.read_pid(cfg) is not None
    local_broker.start(cfg)
    yield cfg.bootstrap
    if not was_running:
        local_broker.stop(cfg)


@pytest.fixture()
def settings(kafka_bootstrap: str) -> Settings:
    """Settings with a topic prefix of its own, so every test gets fresh topics."""
    prefix = f"t-{uuid.uuid4().hex[:10]}-"
    return Settings.from_env(
        {"TWINSTREAM_BOOTSTRAP_SERVERS": kafka_bootstrap, "TWINSTREAM_TOPIC_PREFIX": prefix}
    )
