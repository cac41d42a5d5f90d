"""The ``ingest`` agent over ``events``, the timer that closes attribution windows, and the
rebalance hooks that hand partitions over.

The consumer diverts the records of ``events`` (:class:`streaming.transport.Diverted`): each fetch
(up to ``broker_max_poll_records``, every owned partition's records together) goes to
:class:`streaming.ingest.IngestService` as one batch, without a Faust message per record, and once
the batch is durable (the broker has acknowledged every record the batch made: samples, dead
letters, copies, changelog; the local stores hold it) the batch's last offset of each partition is
acknowledged (:meth:`streaming.transport.Consumer.ack_batch`) and Faust commits it. The next batch
is applied while the broker acknowledges the last one's records (:meth:`IngestService.push`,
:mod:`streaming.pipeline`); while no batch is waiting, those in flight are completed, and a
rebalance completes them before it pauses a partition. A batch fetched before a rebalance is
dropped; a partition paused meanwhile is not acknowledged. The ``ingest`` agent stays subscribed to
``events`` (Faust assigns the partitions of the topics its agents read) and applies what reaches it
through Faust (its test context) in batches of up to ``BATCH_SIZE``, acknowledged by ``take_events``
once handled. On a rebalance the revoked partitions of ``events`` are paused at once and the new
assignment is owned (caught up from the changelog) when it comes. A batch, tick or catch-up that
fails (a state write, or a record the broker refused) stops the worker (:mod:`streaming.failstop`):
the agent takes no further batch and the failed one is never committed.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from typing import Any

import faust
from faust.types import TP

from contracts.settings import Settings
from streaming.failstop import FailStop
from streaming.gauges import WorkerGauges
from streaming.ingest import IngestService, RawMessage
from streaming.partitions import OwnedPartitions
from streaming.transport import Consumer, Diverted, FetchedBatch

log = logging.getLogger(__name__)
BATCH_SIZE = 2_000
BATCH_WITHIN_S = 0.1
TICK_INTERVAL_S = 5.0


def events_topic(app: faust.App, settings: Settings) -> faust.TopicT:
    return app.topic(
        settings.topics.events,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.topics.events_partitions,
    )


def add_ingest_agent(
    app: faust.App,
    settings: Settings,
    service: IngestService,
    gauges: WorkerGauges,
    fail_stop: FailStop,
) -> None:
    """The diverted fetches and the agent, then the timers: expired windows closed, and the
    gauges sampled."""
    diverted = Diverted({settings.topics.events})
    app.diverted = diverted  # type: ignore[attr-defined]  # read by streaming.transport.Consumer

    @app.task
    async def ingest_fetched() -> None:
        while fail_stop.healthy:
            try:
                batch = await next_batch(diverted, service)
                if batch.generation != app.consumer_generation_id:
                    continue  # fetched before a rebalance: fetched again from the committed offset
                done = functools.partial(acknowledge, app, service, batch)
                await service.push(fetched_messages(batch), done)
                if not settings.ingest_overlap:
                    await service.drain()
            except Exception as exc:
                await fail_stop.halt(exc)
                return

    @app.agent(events_topic(app, settings), name="ingest")
    async def ingest(stream: Any) -> None:  # faust.Stream: take_events is not on StreamT
        async for batch in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_S):
            try:
                await service.handle([raw_message(e) for e in batch])
            except Exception as exc:  # here, not in Faust: it would ack the batch and go on
                await fail_stop.halt(exc)

    @app.timer(interval=TICK_INTERVAL_S)
    async def close_attribution_windows() -> None:
        try:
            await service.tick()
        except Exception as exc:
            await fail_stop.halt(exc)

    @app.timer(interval=TICK_INTERVAL_S)
    async def sample_gauges() -> None:
        # a timer of its own: asking a broker whose leader is away for offsets waits up to a
        # request timeout (30 s), which must not hold back the attribution windows
        await gauges.sample()


def add_rebalance_hooks(
    app: faust.App, settings: Settings, partitions: OwnedPartitions, fail_stop: FailStop
) -> None:
    """Pause what is revoked; own what is assigned (only ``events`` partitions count). A
    catch-up that fails crashes the app with the fail-stop's reason."""

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: faust.App, revoked: set[TP], **kwargs: Any) -> None:
        await partitions.pause(events_partitions(revoked, settings))

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: faust.App, assigned: set[TP], **kwargs: Any) -> None:
        try:
            await partitions.own(events_partitions(assigned, settings))
        except Exception as exc:
            raise fail_stop.trip(exc) from exc
        log.warning("ingest owns partitions %s", sorted(partitions.workers))


async def next_batch(diverted: Diverted, service: IngestService) -> FetchedBatch:
    """The next fetched batch; while none is there, the batches in flight are taken on step
    by step (an idle worker leaves none undone)."""
    while diverted.batches.empty() and service.in_flight:
        await service.step()
    return await diverted.batches.get()


def events_partitions(tps: Iterable[TP], settings: Settings) -> set[int]:
    """The partition numbers of ``events`` among ``tps``.

    >>> s = Settings()
    >>> sorted(events_partitions([TP(s.topics.events, 2), TP(s.topics.scores, 1)], s))
    [2]
    """
    return {tp.partition for tp in tps if tp.topic == settings.topics.events}


def fetched_messages(batch: FetchedBatch) -> list[RawMessage]:
    return [
        RawMessage(tp.partition, r.offset, r.value, (r.timestamp or 0) / 1000)
        for tp, records in batch.records.items()
        for r in records
    ]


def acknowledge(app: faust.App, service: IngestService, batch: FetchedBatch) -> None:
    """Let Faust commit the handled batch's partitions, unless a rebalance came in between."""
    consumer = app.consumer
    if not isinstance(consumer, Consumer) or batch.generation != app.consumer_generation_id:
        return
    for tp, records in batch.records.items():
        if service.partitions.applying(tp.partition):
            consumer.ack_batch(tp, records[-1].offset, len(records))


def raw_message(event: faust.EventT) -> RawMessage:
    message = event.message
    return RawMessage(message.partition, message.offset, message.value, message.timestamp)
