"""One login to Kafka before a command starts, so that a refused login fails at once, with the
broker's reason and the settings to check.

kafka-python, which most commands use, retries a refused SASL login until its bootstrap times out
and then says only ``Unable to bootstrap``: the broker closes the connection right after its
answer, and the answer is lost. One connection made with aiokafka (Faust's client), which reads
it, tells the cases apart: a wrong user or password, a mechanism the broker does not offer, a
certificate that does not verify, TLS spoken to a listener without it. A broker that does not
answer is not a refusal: the command goes on and waits for it as it always has.

>>> bootstrap_hosts("kafka-1:9093,10.0.0.2:9093,[::1]:9094")
[('kafka-1', 9093), ('10.0.0.2', 9093), ('::1', 9094)]
"""

from __future__ import annotations

import asyncio
import ssl

from aiokafka.conn import create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)

from contracts.security import ENV
from contracts.settings import Settings

LOGIN_TIMEOUT_S = 10.0
SASL_REFUSALS = (SaslAuthenticationFailed, UnsupportedSaslMechanismError, IllegalSaslStateError)


def bootstrap_hosts(servers: str) -> list[tuple[str, int]]:
    hosts = []
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        hosts.append((host.strip("[]"), int(port)))
    return hosts


def login_refused(settings: Settings, timeout_s: float = LOGIN_TIMEOUT_S) -> str | None:
    """Why the first bootstrap server that answers refuses these TLS and SASL settings, or None
    (logged in, nothing to check with ``PLAINTEXT``, or no server answered)."""
    if settings.security.protocol == "PLAINTEXT":
        return None
    return asyncio.run(_first_refusal(settings, timeout_s))


async def _first_refusal(settings: Settings, timeout_s: float) -> str | None:
    security = settings.security
    for host, port in bootstrap_hosts(settings.bootstrap_servers):
        where = f"Kafka at {host}:{port} ({security.protocol})"
        try:
            login = create_conn(host, port, **security.client_config())
            conn = await asyncio.wait_for(login, timeout_s)
        except SASL_REFUSALS as err:
            names = ", ".join(ENV[k] for k in ("username", "password", "sasl_mechanism"))
            who = f"user {security.username!r} with {security.sasl_mechanism}"
            return f"{where} refused the login of {who}: {err}; check {names}"
        except ssl.SSLError as err:
            names = ", ".join(ENV[k] for k in ("protocol", "ca_file", "check_hostname"))
            return f"TLS with {where} failed: {err}; check {names}"
        except (OSError, KafkaError):  # TimeoutError is an OSError
            continue  # not answering, or closing on us: not a refusal of these settings
        conn.close()
        return None
    return None
