"""How every Kafka client of the project authenticates: TLS and SASL settings from the environment.

Most teams run Kafka behind ``SASL_SSL``. One :class:`KafkaSecurity` is read from the environment
with the other settings and turned into the keyword arguments kafka-python and aiokafka share
(:meth:`KafkaSecurity.client_config`), so a producer, a consumer, an admin client, the trainer
and the Faust worker all connect the same way; librdkafka clients take
:meth:`KafkaSecurity.librdkafka_config`, and a child process is handed the same settings as
environment variables (:meth:`KafkaSecurity.environment`).

=========================================  =================================================
``TWINSTREAM_SECURITY_PROTOCOL``           ``PLAINTEXT`` (default), ``SSL``, ``SASL_PLAINTEXT``
                                           or ``SASL_SSL``
``TWINSTREAM_SASL_MECHANISM``              ``PLAIN``, ``SCRAM-SHA-256`` or ``SCRAM-SHA-512``
``TWINSTREAM_SASL_USERNAME`` / ``_PASSWORD``  the SASL user
``TWINSTREAM_SSL_CAFILE``                  PEM file of the CA that signed the brokers' certificates
``TWINSTREAM_SSL_CERTFILE`` / ``_KEYFILE``    PEM client certificate and key (mutual TLS)
``TWINSTREAM_SSL_CHECK_HOSTNAME``          ``true`` (default) or ``false``
=========================================  =================================================

>>> KafkaSecurity.from_env({}).client_config()
{'security_protocol': 'PLAINTEXT'}
>>> s = KafkaSecurity.from_env({"TWINSTREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
...     "TWINSTREAM_SASL_MECHANISM": "SCRAM-SHA-256", "TWINSTREAM_SASL_USERNAME": "app",
...     "TWINSTREAM_SASL_PASSWORD": "secret"})
>>> sorted(s.client_config())
['sasl_mechanism', 'sasl_plain_password', 'sasl_plain_username', 'security_protocol']
>>> "secret" in repr(s)
False
>>> KafkaSecurity.from_env(s.environment()) == s
True
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
ENV = {
    "protocol": "TWINSTREAM_SECURITY_PROTOCOL",
    "sasl_mechanism": "TWINSTREAM_SASL_MECHANISM",
    "username": "TWINSTREAM_SASL_USERNAME",
    "password": "TWINSTREAM_SASL_PASSWORD",
    "ca_file": "TWINSTREAM_SSL_CAFILE",
    "cert_file": "TWINSTREAM_SSL_CERTFILE",
    "key_file": "TWINSTREAM_SSL_KEYFILE",
    "check_hostname": "TWINSTREAM_SSL_CHECK_HOSTNAME",
}


@dataclass(frozen=True)
class KafkaSecurity:
    """TLS and SASL settings of a Kafka client; ``PLAINTEXT`` needs none of them."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    check_hostname: bool = True

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"security protocol {self.protocol!r} is not one of {PROTOCOLS}")
        if self.uses_sasl:
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise ValueError(
                    f"{self.protocol} needs a SASL mechanism of {SASL_MECHANISMS}, "
                    f"got {self.sasl_mechanism!r} ({ENV['sasl_mechanism']})"
                )
            if not self.username or self.password is None:
                raise ValueError(f"{self.protocol} needs {ENV['username']} and {ENV['password']}")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError(f"set both {ENV['cert_file']} and {ENV['key_file']}, or neither")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> KafkaSecurity:
        values: dict[str, Any] = {k: env[v] for k, v in ENV.items() if env.get(v)}
        if "check_hostname" in values:
            values["check_hostname"] = _flag(values["check_hostname"], ENV["check_hostname"])
        if "protocol" in values:
            values["protocol"] = values["protocol"].upper()
        return cls(**values)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context (system CAs unless a CA file is given), or None without TLS."""
        if not self.uses_tls:
            return None
        context = ssl.create_default_context(cafile=self.ca_file)
        context.check_hostname = self.check_hostname
        if self.cert_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_config(self) -> dict[str, Any]:
        """Keyword arguments that kafka-python's and aiokafka's clients both accept."""
        config: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_tls:
            config["ssl_context"] = self.ssl_context()
        if self.uses_sasl:
            config["sasl_mechanism"] = self.sasl_mechanism
            config["sasl_plain_username"] = self.username
            config["sasl_plain_password"] = self.password
        return config

    def librdkafka_config(self) -> dict[str, str]:
        """The same settings for a librdkafka client (confluent-kafka), in its property names.

        >>> c = KafkaSecurity("SSL", ca_file="ca.pem", check_hostname=False).librdkafka_config()
        >>> c["security.protocol"], c["ssl.ca.location"], c["ssl.endpoint.identification.algorithm"]
        ('SSL', 'ca.pem', 'none')
        """
        config = {"security.protocol": self.protocol}
        if self.uses_tls:
            files = {
                "ssl.ca.location": self.ca_file,
                "ssl.certificate.location": self.cert_file,
                "ssl.key.location": self.key_file,
            }
            config |= {name: path for name, path in files.items() if path is not None}
            config["ssl.endpoint.identification.algorithm"] = (
                "https" if self.check_hostname else "none"
            )
        if self.uses_sasl:
            config["sasl.mechanism"] = str(self.sasl_mechanism)
            config["sasl.username"] = str(self.username)
            config["sasl.password"] = str(self.password)
        return config

    def environment(self) -> dict[str, str]:
        """The environment variables that give a child process these settings (the password too:
        hand them only to processes of the same deployment)."""
        values = {
            "protocol": self.protocol,
            "sasl_mechanism": self.sasl_mechanism,
            "username": self.username,
            "password": self.password,
            "ca_file": self.ca_file,
            "cert_file": self.cert_file,
            "key_file": self.key_file,
            "check_hostname": "true" if self.check_hostname else "false",
        }
        return {ENV[name]: value for name, value in values.items() if value is not None}


def _flag(raw: str, name: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {raw!r}")
