"""The Faust application: one app object, the ``events`` topic, the ingest agent, rebalance hooks.

``twinstream worker`` runs it; several workers (processes or machines) with the same topic prefix
share the partitions of ``events`` through Kafka's consumer group protocol, and hand state over
through the state changelog (see :mod:`streaming.changelog`).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import Any, NoReturn

import faust
import faust.web
import orjson
from faust.types import TP

from contracts.settings import Settings
from serving.requests import MAX_REQUEST_BYTES, error_response
from streaming.ingest import Delivery, IngestService, RawMessage
from streaming.metrics import IngestMetrics
from streaming.transport import SCHEME

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
BATCH_BYTES = 512 * 1024  # record batches of send_many; under the broker's 1 MiB default


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

    async def send_many(
        self, topic: str, partition: int, records: Iterable[tuple[bytes | None, bytes | None]]
    ) -> Delivery:
        """Records appended straight into aiokafka record batches (C code, no per-message
        future or task): a fraction of :meth:`send`'s per-message cost. Each record stays its
        own Kafka message, keys included, so compaction works as with :meth:`send`."""
        # Faust 0.15 has no public batch API; its aiokafka producer has (create/send_batch)
        producer = self.app.producer._ensure_producer()  # type: ignore[attr-defined]
        futures, last, batch = [], -1, producer.create_batch()
        for key, value in records:
            appended = batch.append(key=key, value=value, timestamp=None)
            if appended is None:  # full: ship it, start the next one
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                appended = batch.append(key=key, value=value, timestamp=None)
            last = appended.offset
        if batch.record_count():
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        return Delivery(futures, last)

    async def flush(self) -> None:
        await self.app.producer.flush()


GC_YOUNG_THRESHOLD = 20_000  # allocations between young collections (Python's default: 700)


class Worker(faust.Worker):
    """``faust.Worker`` without its terminal spinner, with the collector tuned for streaming.

    At a log level of ``warn`` or above the spinner turns on for every log record: Faust sets
    the root logger to DEBUG and adds a handler that spins per record, so each debug call in
    aiokafka and Faust (one per produced message) builds and handles a record. Without it the
    root logger keeps the requested level and those calls return at once.

    Faust allocates several objects per message, so Python's collector ran young collections
    every 700 allocations and a full one every few seconds over everything imported (torch,
    Faust): pauses of 150-200 ms in the ingest worker at 2,000 events/s. The objects that exist
    when the worker starts are frozen out of collections and young collections run every
    ``GC_YOUNG_THRESHOLD`` allocations: no pause over 50 ms in a run of the same load.
    """

    def execute_from_commandline(self) -> NoReturn:
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)
        super().execute_from_commandline()

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None
        super().on_setup_root_logger(logger, level)


def create_app(
    settings: Settings,
    name: str = "twinstream-ingest",
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
        }
    if datadir is not None:
        datadir.mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
        web["datadir"] = str(datadir)
    return faust.App(
        f"{settings.topics.prefix}{name}",
        broker=servers,
        **web,
        topic_partitions=settings.topics.events_partitions,
        consumer_auto_offset_reset="earliest",
        broker_max_poll_records=5_000,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=20_000,
        stream_wait_empty=False,
        producer_max_request_size=MAX_MESSAGE_BYTES,
        producer_max_batch_size=BATCH_BYTES,
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
    http_port: int | None = None,
) -> tuple[faust.App, IngestService]:
    app = create_app(settings, http_port=http_port, datadir=Path(state_dir) / "faust")
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

    requests = app.topic(
        settings.topics.score_requests,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.topics.events_partitions,
    )

    @app.agent(requests, name="score")
    async def score(stream: Any) -> None:
        async for event in stream.events():
            partition = event.message.partition
            answer = service.answer(event.message.value, partition, "kafka")
            await service.sink.send(
                settings.topics.scores, event.message.key, orjson.dumps(answer), partition
            )

    if http_port is not None:
        add_http(app, service, requests)

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


FORWARDED = "X-Twinstream-Forwarded"


def add_http(app: faust.App, service: IngestService, requests: faust.TopicT) -> None:
    """``POST /score``: answered here when this worker owns the user, else forwarded once."""

    @app.page("/score")
    class ScoreView(faust.web.View):
        async def post(self, request: Any) -> Any:
            if (request.content_length or 0) > MAX_REQUEST_BYTES:
                return self.json(error_response(None, "too_large", "request too large"), status=413)
            body = await request.read()
            owner = _owner(app, requests, body)
            if owner is None or owner == app.conf.canonical_url or FORWARDED in request.headers:
                answer = service.answer(body, _partition(app, requests, body), "http")
                return self.json(answer, status=400 if "error" in answer else 200)
            return await _forward(app, owner, body)

    @app.page("/healthz")
    class Health(faust.web.View):
        async def get(self, request: Any) -> Any:
            model = service.holder.model
            return self.json(
                {
                    "partitions": sorted(service.workers),
                    "model_version": None if model is None else model.version,
                }
            )


def _user_key(body: bytes) -> bytes | None:
    try:
        user = orjson.loads(body).get("user_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return (
        str(user).encode() if isinstance(user, str | int) and not isinstance(user, bool) else None
    )


def _partition(app: faust.App, requests: faust.TopicT, body: bytes) -> int | None:
    key = _user_key(body)
    if key is None:
        return None
    return int(app.producer.key_partition(requests.get_topic_name(), key).partition)


def _owner(app: faust.App, requests: faust.TopicT, body: bytes) -> Any:
    key = _user_key(body)
    if key is None:
        return None
    try:
        return app.router.external_topic_key_store(requests, key)
    except KeyError:
        return None


async def _forward(app: faust.App, owner: Any, body: bytes) -> Any:
    url = f"{owner}".rstrip("/") + "/score"
    async with app.http_client.post(url, data=body, headers={FORWARDED: "1"}) as response:
        from aiohttp import web

        return web.Response(
            body=await response.read(), status=response.status, content_type="application/json"
        )


def _ours(tps: Iterable[TP], settings: Settings) -> set[int]:
    return {tp.partition for tp in tps if tp.topic == settings.topics.events}


def _raw(event: faust.EventT) -> RawMessage:
    message = event.message
    value = message.value
    return RawMessage(message.partition, message.offset, value, message.timestamp)
