"""The Faust application object, made in one place: broker, consumer group, web server and the
producer and consumer tuning every worker shares.

``twinstream worker`` runs it (:mod:`streaming.worker` wires the agents and views onto it);
several workers (processes or machines) with the same topic prefix share the partitions of
``events`` through Kafka's consumer group protocol, and hand state over through the state
changelog (see :mod:`streaming.changelog`). Its web server closes idle and slow clients
(:mod:`streaming.http_timeouts`). Its Kafka clients connect with the deployment's TLS and SASL
settings (:func:`broker_credentials`).

>>> from contracts.settings import Settings
>>> create_app(Settings.from_env({"TWINSTREAM_TOPIC_PREFIX": "demo-"})).conf.id
'demo-twinstream-ingest'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faust

from contracts.security import KafkaSecurity
from contracts.settings import Settings
from streaming.http_timeouts import web_options
from streaming.transport import SCHEME

APP_NAME = "twinstream-ingest"  # with the topic prefix: the app id and Faust consumer group
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
BATCH_BYTES = 512 * 1024  # record batches of send_many; under the broker's 1 MiB default


def create_app(
    settings: Settings,
    name: str = APP_NAME,
    http_port: int | None = None,
    datadir: Path | None = None,
) -> faust.App:
    """The app object. ``datadir``: Faust's own folder (default: ``NAME-data`` in the current
    directory, which is Faust's default); the worker keeps it under its state directory."""
    servers = ";".join(f"{SCHEME}://{s}" for s in settings.bootstrap_servers.split(","))
    web: dict[str, Any] = {"web_enabled": False}
    if http_port is not None:
        url = f"http://{settings.http_host}:{http_port}"
        web = {
            "web_enabled": True,
            "web_bind": settings.http_host,
            "web_port": http_port,
            "canonical_url": url,
            "web_application_options": web_options(settings),
        }
    if datadir is not None:
        datadir.mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
        web["datadir"] = str(datadir)
    return faust.App(
        f"{settings.topics.prefix}{name}",
        broker=servers,
        broker_credentials=broker_credentials(settings.security),
        **web,
        topic_partitions=settings.topics.events_partitions,
        consumer_auto_offset_reset="earliest",
        broker_max_poll_records=5_000,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=20_000,
        stream_wait_empty=False,
        producer_acks=-1,  # all in-sync replicas (Faust's default, stated): none lost to failover
        producer_max_request_size=MAX_MESSAGE_BYTES,
        producer_max_batch_size=BATCH_BYTES,
        consumer_max_fetch_size=MAX_MESSAGE_BYTES,
        table_standby_replicas=0,
        topic_replication_factor=settings.topics.replication_factor,  # Faust's own topics
    )


def broker_credentials(security: KafkaSecurity) -> faust.types.auth.CredentialsT | None:
    """Faust's form of the TLS and SASL settings (its aiokafka driver hands them to every
    consumer, producer and admin client it makes); None for ``PLAINTEXT``.

    >>> broker_credentials(KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", "twin", "pw")).protocol.value
    'SASL_SSL'
    """
    context = security.ssl_context()
    if security.uses_sasl:
        return faust.SASLCredentials(
            username=security.username,
            password=security.password,
            mechanism=security.sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None
