"""Shared fixtures: a real Kafka broker for the session, fresh topic names per test, and the
``taobao_users`` log (real, or a generated stand-in on a machine without ../shared/data).

The broker comes from ``KAFKA_BOOTSTRAP_SERVERS`` when set, else from testcontainers when a
Docker engine answers, else from the project's own jar broker (``twinstream broker start``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
import warnings
from collections.abc import Callable, Iterator

import pytest

from contracts.settings import Settings
from ops import broker as local_broker
from tests.support.data import BehaviourLog, taobao_users_log, taobao_users_source


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
    was_running = bool(local_broker.running(cfg))
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


def pytest_report_header() -> str:
    source, reason = taobao_users_source()
    return f"taobao_users log: {source} ({reason})"


@pytest.fixture(scope="session")
def taobao_users(tmp_path_factory: pytest.TempPathFactory) -> BehaviourLog:
    """The ``taobao_users`` log for the session; a warning says when it is a generated one."""
    log = taobao_users_log(tmp_path_factory.getbasetemp() / "taobao_users.csv")
    if log.source == "generated":
        warnings.warn(
            f"{log.reason}: tests of the Taobao log read a generated log of the same shape "
            f"instead ({log.rows:,} rows, {log.path})",
            stacklevel=1,
        )
    return log


@pytest.fixture()
def taobao_log(
    taobao_users: BehaviourLog, record_property: Callable[[str, object], None]
) -> BehaviourLog:
    """The ``taobao_users`` log; the test's report records which one it read."""
    record_property("taobao_log", f"{taobao_users.source}: {taobao_users.path}")
    return taobao_users
