"""The local jar broker's commands are idempotent (a separate broker on its own ports)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ops import broker

pytestmark = pytest.mark.integration


@pytest.fixture()
def cfg(tmp_path: Path) -> broker.BrokerConfig:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("no Java: the local jar broker cannot run here")
    return broker.BrokerConfig(port=29192, controller_port=29193, run_dir=tmp_path / "kafka")


def test_start_twice_stop_twice_and_stale_pid(cfg: broker.BrokerConfig) -> None:
    assert broker.stop(cfg) is False  # nothing running: fine
    pids = broker.start(cfg)
    try:
        assert broker.start(cfg) == pids  # already running: same broker
        assert "accepting connections" in broker.status(cfg)
    finally:
        assert broker.stop(cfg) is True
    assert broker.stop(cfg) is False
    assert not broker.port_open(cfg.host, cfg.port)
    node = cfg.nodes[0]
    node.pid_file.write_text("999999")  # stale pid file from a crashed run
    assert broker.status(cfg) == "stopped" and not node.pid_file.exists()
    broker.start(cfg)  # restart on the same formatted storage
    try:
        assert broker.port_open(cfg.host, cfg.port)
    finally:
        broker.stop(cfg)


def test_pid_file_of_a_foreign_process_is_not_ours(cfg: broker.BrokerConfig) -> None:
    cfg.run_dir.mkdir(parents=True)
    node = cfg.nodes[0]
    node.pid_file.write_text(str(os.getpid()))  # a live process that is not Kafka
    assert broker.read_pid(node) is None
    assert broker.stop(cfg) is False
