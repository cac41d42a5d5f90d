"""A Kafka broker (or cluster) of the test's own, never the shared one: ``ops.broker`` on ports
and a folder the test names, started for the test and stopped after it whatever happened; and
the deployment on it, handed to the processes the test starts through the environment."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from contracts.settings import Settings
from ops import broker


@contextmanager
def own_broker(
    run_dir: Path, port: int, controller_port: int, *, brokers: int = 1, sasl_ssl: bool = False
) -> Iterator[broker.BrokerConfig]:
    """``brokers`` KRaft nodes from ``port`` and ``controller_port`` (with ``sasl_ssl``, a single
    broker whose only client listener is SASL_SSL), their files under ``run_dir``. Skips the
    test where the jar broker cannot run: no Java, or no keytool for the certificates."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("no Java: the local jar broker cannot run here")
    if sasl_ssl and shutil.which("keytool") is None:
        pytest.skip("no keytool: the secured broker's certificates cannot be made here")
    cfg = broker.BrokerConfig(
        port=port, controller_port=controller_port, run_dir=run_dir, brokers=brokers,
        sasl_ssl=sasl_ssl,
    )  # fmt: skip
    try:
        broker.start(cfg)
        yield cfg
    finally:
        broker.stop(cfg)


def deployment_on(
    cfg: broker.BrokerConfig, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """The deployment on ``cfg``'s broker: its topics named with ``topic_prefix``, replicated as
    the cluster allows, its clients with the broker's TLS and SASL settings. The same settings
    are set in the test's environment, so the processes it starts inherit them (one thread
    each, their output unbuffered)."""
    env = {
        "TWINSTREAM_BOOTSTRAP_SERVERS": cfg.bootstrap,
        "TWINSTREAM_TOPIC_PREFIX": topic_prefix,
        "TWINSTREAM_REPLICATION_FACTOR": str(cfg.replication),
        "TWINSTREAM_MIN_INSYNC_REPLICAS": str(cfg.min_insync),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        **cfg.security.environment(),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings.from_env(env)
