"""The Faust application: one app object, the ``events`` topic, the ingest agent, rebalance hooks.

``twinstream worker`` runs it; several workers (processes or machines) with the same topic prefix
share the partitions of ``events`` through Kafka's consumer group protocol, and hand state over
through the state changelog (see :mod:`streaming.changelog`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import Any

import faust
from faust.types import TP

from streaming.config import Settings
from streaming.ingest import IngestService, RawMessage
from streaming.metrics import IngestMetrics

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class FaustSink:
    """The :class:`streaming.ingest.Sink` over the app's own producer."""

    def __init__(self, app: faust.App) -> None:
        self.app = app

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Awaitable[Any]:
        return self.app.producer.send(topic, key, value, partition, None, headers)

    async def flush(self) -> None:
        await self.app.producer.flush()


def create_app(settings: Settings, name: str = "twinstream-ingest") -> faust.App:
    servers = ";".join(f"kafka://{s}" for s in settings.bootstrap_servers.split(","))
    return faust.App(
        f"{settings.topics.prefix}{name}",
        broker=servers,
        web_enabled=False,
        topic_partitions=settings.topics.events_partitions,
        consumer_auto_offset_reset="earliest",
        broker_max_poll_records=5_000,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=20_000,
        stream_wait_empty=False,
        producer_max_request_size=MAX_MESSAGE_BYTES,
        consumer_max_fetch_size=MAX_MESSAGE_BYTES,
        table_standby_replicas=0,
    )


def build_ingest(
    settings: Settings,
    state_dir: str | Path,
    metrics: IngestMetrics | None = None,
    batch_size: int = 2_000,
    batch_within_s: float = 0.1,
    tick_interval_s: float = 5.0,
) -> tuple[faust.App, IngestService]:
    app = create_app(settings)
    service = IngestService(settings, FaustSink(app), Path(state_dir), metrics)
    events = app.topic(
        settings.topics.events,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.topics.events_partitions,
    )

    @app.agent(events, name="ingest")
    async def ingest(stream: Any) -> None:  # faust.Stream: take_events is not on StreamT
        async for batch in stream.take_events(batch_size, within=batch_within_s):
            await service.handle([_raw(e) for e in batch])

    @app.timer(interval=tick_interval_s)
    async def close_attribution_windows() -> None:
        await service.tick()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: faust.App, revoked: set[TP], **kwargs: Any) -> None:
        await service.pause(_ours(revoked, settings))

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: faust.App, assigned: set[TP], **kwargs: Any) -> None:
        await service.own(_ours(assigned, settings))
        log.warning("ingest owns partitions %s", sorted(service.workers))

    return app, service


def _ours(tps: Iterable[TP], settings: Settings) -> set[int]:
    return {tp.partition for tp in tps if tp.topic == settings.topics.events}


def _raw(event: faust.EventT) -> RawMessage:
    message = event.message
    value = message.value
    return RawMessage(message.partition, message.offset, value, message.timestamp)
