"""The login tried before a Kafka command (no broker needed): nothing to check with PLAINTEXT, a
server that does not answer is no refusal, and incomplete security settings stop the command with
the variable to set. A broker that refuses the login: tests/integration/test_secured_cluster.py."""

from __future__ import annotations

import socket

import pytest

from contracts.settings import Settings
from ops import cli
from ops.kafka_login import login_refused

SASL_SSL = {
    "TWINSTREAM_SECURITY_PROTOCOL": "SASL_SSL",
    "TWINSTREAM_SASL_MECHANISM": "SCRAM-SHA-512",
    "TWINSTREAM_SASL_USERNAME": "twin",
    "TWINSTREAM_SASL_PASSWORD": "s3cret",
}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # free once the socket closes


def test_plaintext_needs_no_login() -> None:
    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{closed_port()}"})
    assert login_refused(settings) is None


def test_a_server_that_does_not_answer_is_no_refusal() -> None:
    env = {**SASL_SSL, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{closed_port()}"}
    assert login_refused(Settings.from_env(env), timeout_s=5) is None


def test_incomplete_settings_stop_a_kafka_command_with_the_variable_to_set(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TWINSTREAM_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.delenv("TWINSTREAM_SASL_MECHANISM", raising=False)
    assert cli.main(["topics"]) == 2
    assert "needs a SASL mechanism" in capsys.readouterr().err
