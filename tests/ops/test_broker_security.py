"""The local broker started with a SASL_SSL client listener only (no JVM needed; keytool makes the
certificates): its listeners, users and key stores, the settings it writes for clients, and what
it refuses."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from contracts.security import KafkaSecurity
from ops import broker, broker_security
from ops.kafka_jars import BrokerError


def parse(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line)
    return {key: value for key, value in pairs}


def test_the_secured_broker_offers_clients_sasl_ssl_and_nothing_else(tmp_path: Path) -> None:
    cfg = broker.BrokerConfig(port=29300, controller_port=29301, run_dir=tmp_path, sasl_ssl=True)
    (node,) = cfg.nodes
    text = broker.server_properties(cfg, node)
    p = parse(text)
    assert p["listeners"] == "SASL_SSL://127.0.0.1:29300,CONTROLLER://127.0.0.1:29301"
    assert p["advertised.listeners"] == "SASL_SSL://127.0.0.1:29300"
    assert p["listener.security.protocol.map"] == "CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL"
    assert p["inter.broker.listener.name"] == "SASL_SSL"
    assert p["sasl.enabled.mechanisms"] == "SCRAM-SHA-512,PLAIN"
    assert "PLAINTEXT://" not in text and text.count("listeners=") == 2
    made = broker_security.Secrets.load_or_make(tmp_path / "secrets")
    plain_jaas = p["listener.name.sasl_ssl.plain.sasl.jaas.config"]
    assert f'user_twin="{made.user}"' in plain_jaas and f'user_admin="{made.admin}"' in plain_jaas
    assert p["ssl.keystore.location"] == str(tmp_path / "secrets" / "broker.p12")
    # everything else as the plaintext broker has it
    unsecured = broker.BrokerConfig(port=29300, controller_port=29301, run_dir=tmp_path)
    plain = parse(broker.server_properties(unsecured, node))
    assert {k: v for k, v in plain.items() if "listener" not in k} == {
        k: v for k, v in p.items() if k in plain and "listener" not in k
    }
    assert broker_security.format_args(tmp_path) == [
        "--add-scram",
        f"SCRAM-SHA-512=[name=admin,password={made.admin}]",
        "--add-scram",
        f"SCRAM-SHA-512=[name=twin,password={made.user}]",
    ]


def test_passwords_are_made_once_and_kept_from_others(tmp_path: Path) -> None:
    first = broker_security.Secrets.load_or_make(tmp_path / "secrets")
    assert broker_security.Secrets.load_or_make(tmp_path / "secrets") == first
    assert len({first.store, first.user, first.admin}) == 3
    assert (tmp_path / "secrets" / "passwords.json").stat().st_mode & 0o077 == 0


def test_only_a_single_broker_is_secured(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BrokerError, match="single broker"):
        broker.BrokerConfig(brokers=3, sasl_ssl=True)
    monkeypatch.setenv("TWINSTREAM_BROKER_SASL_SSL", "1")
    assert broker.BrokerConfig.from_env().sasl_ssl
    monkeypatch.delenv("TWINSTREAM_BROKER_SASL_SSL")
    assert not broker.BrokerConfig.from_env().sasl_ssl
    assert broker.BrokerConfig.from_env(sasl_ssl=True).sasl_ssl


def test_storage_formatted_without_users_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "meta.properties").write_text("cluster.id=x\n")
    with pytest.raises(BrokerError, match="formatted without SASL users"):
        broker_security.prepare(tmp_path, tmp_path / "data")


@pytest.mark.skipif(shutil.which("keytool") is None, reason="needs a JDK's keytool")
def test_certificates_and_client_settings(tmp_path: Path) -> None:
    broker_security.prepare(tmp_path, tmp_path / "data")
    folder = tmp_path / "secrets"
    for name in ("ca.pem", "broker.p12", "truststore.p12"):
        assert (folder / name).stat().st_size > 0
    if shutil.which("openssl"):  # the broker's certificate names 127.0.0.1 and verifies
        check = ["openssl", "verify", "-CAfile", str(folder / "ca.pem"), "-verify_ip", "127.0.0.1"]
        done = subprocess.run([*check, str(folder / "broker.pem")], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    ssl.create_default_context(cafile=str(folder / "ca.pem"))  # a CA clients can load
    env_file = broker_security.client_env_file(tmp_path)
    assert env_file.stat().st_mode & 0o077 == 0
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    security = KafkaSecurity.from_env(env)
    assert security == broker.BrokerConfig(run_dir=tmp_path, sasl_ssl=True).security
    assert (security.protocol, security.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert security.ca_file == str(folder / "ca.pem") and security.check_hostname
    made = broker_security.Secrets.load_or_make(folder)
    broker_security.prepare(tmp_path, tmp_path / "data")  # a restart keeps what was made
    assert broker_security.Secrets.load_or_make(folder) == made
