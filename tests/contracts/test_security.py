"""KafkaSecurity: TLS and SASL settings from the environment, refused when incomplete."""

from __future__ import annotations

import ssl

import pytest

from contracts.security import KafkaSecurity
from contracts.settings import Settings

SASL_SSL = {
    "TWINSTREAM_SECURITY_PROTOCOL": "sasl_ssl",
    "TWINSTREAM_SASL_MECHANISM": "SCRAM-SHA-512",
    "TWINSTREAM_SASL_USERNAME": "twin",
    "TWINSTREAM_SASL_PASSWORD": "s3cret",
    "TWINSTREAM_SSL_CHECK_HOSTNAME": "false",
}


def test_sasl_ssl_gives_every_client_the_same_tls_context_and_user() -> None:
    config = KafkaSecurity.from_env(SASL_SSL).client_config()
    assert config["security_protocol"] == "SASL_SSL"
    assert (config["sasl_mechanism"], config["sasl_plain_username"]) == ("SCRAM-SHA-512", "twin")
    assert config["sasl_plain_password"] == "s3cret"
    context = config["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.check_hostname is False


def test_settings_carry_security_into_the_kafka_config() -> None:
    settings = Settings.from_env({**SASL_SSL, "KAFKA_BOOTSTRAP_SERVERS": "kafka:9093"})
    config = settings.kafka_config()
    assert config["bootstrap_servers"] == "kafka:9093"
    assert config["security_protocol"] == "SASL_SSL"
    assert Settings.from_env({}).kafka_config() == {
        "bootstrap_servers": "127.0.0.1:19092",
        "security_protocol": "PLAINTEXT",
    }


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TWINSTREAM_SECURITY_PROTOCOL": "TLS"}, "not one of"),
        ({"TWINSTREAM_SECURITY_PROTOCOL": "SASL_SSL"}, "needs a SASL mechanism"),
        (
            {
                "TWINSTREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "TWINSTREAM_SASL_MECHANISM": "PLAIN",
            },
            "TWINSTREAM_SASL_USERNAME",
        ),
        ({"TWINSTREAM_SSL_CERTFILE": "client.pem"}, "TWINSTREAM_SSL_KEYFILE"),
        ({"TWINSTREAM_SSL_CHECK_HOSTNAME": "maybe"}, "true or false"),
    ],
)
def test_incomplete_or_unknown_settings_are_refused_with_the_variable_to_set(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        KafkaSecurity.from_env(env)


def test_the_password_never_shows_in_a_repr() -> None:
    settings = Settings.from_env(SASL_SSL)
    assert "s3cret" not in repr(settings)
