"""Fail-stop: a worker that could not make a batch's state durable stops, visibly, and commits
no offset from that batch on.

Left to Faust, a batch whose RocksDB write failed (a full disk) was lost for good: the agent's
exception is logged, ``take_events`` acknowledges the batch as it is let go, the agent is
restarted on the next events, and the group's offsets are committed past events whose state was
never written, while ``/healthz`` says 200. :meth:`FailStop.halt`, called with the exception
instead, (1) refuses every further offset commit of this process
(:meth:`streaming.transport.Consumer.refuse_commits`), (2) marks the worker unhealthy:
``/healthz`` answers 503 with the reason, ``twinstream_worker_healthy`` is 0 and
``twinstream_worker_fatal_errors_total`` counts the fault by kind, (3) says what happened and
what to do in one log line, and (4) after ``GRACE_S`` crashes the app, so that ``twinstream
worker`` exits with status ``EXIT_STATUS`` (:class:`streaming.worker.Worker`). Restarted once the
cause is gone, the worker catches its stores up from the state changelog and resumes from the
last committed offset: no event is lost.

>>> fault_kind(RuntimeError("x")), fault_kind(KafkaError())
('other', 'kafka')
"""

from __future__ import annotations

import asyncio
import logging
from typing import NoReturn

import faust
from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError
from kafka.errors import KafkaError as SyncKafkaError

from feature_store.store import StoreWriteError
from streaming.metrics import IngestMetrics
from streaming.transport import Consumer

log = logging.getLogger(__name__)
EXIT_STATUS = 74  # EX_IOERR in sysexits.h: what had to be written could not be
GRACE_S = 1.0  # /healthz answers 503 this long before the worker begins to stop
FAULT_KINDS = ("state_write", "kafka", "other")  # the label values of the fatal-error counter


class FailStopped(Exception):
    """The reason the app crashes with: the first fault, its kind and what it said."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


def fault_kind(exc: BaseException) -> str:
    """``state_write`` (the store refused a batch), ``kafka`` (a send, flush or acknowledgement
    of samples, dead letters or the changelog failed, or the changelog could not be read) or
    ``other``; the first of these found along the exception's causes."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, StoreWriteError):
            return "state_write"
        if isinstance(seen, KafkaError | SyncKafkaError | ProducerSendError):
            return "kafka"
        seen = seen.__cause__
    return "other"


class FailStop:
    """The worker's health: healthy until :meth:`trip`, then stopped for good (one per app)."""

    def __init__(self, app: faust.App, metrics: IngestMetrics, grace_s: float = GRACE_S) -> None:
        self.app, self.metrics, self.grace_s = app, metrics, grace_s
        self.fault: FailStopped | None = None
        metrics.healthy.set(1)

    @property
    def healthy(self) -> bool:
        return self.fault is None

    def trip(self, exc: BaseException) -> FailStopped:
        """Refuse every later offset commit, turn unhealthy, count and log the fault. The first
        fault is the reason; later ones (the same failure seen again) change nothing."""
        if self.fault is not None:
            return self.fault
        fault = FailStopped(fault_kind(exc), str(exc) or type(exc).__name__)
        self.fault = fault
        consumer = self.app.consumer
        if not isinstance(consumer, Consumer):
            raise TypeError(f"{type(consumer).__name__} cannot refuse commits: use create_app")
        consumer.refuse_commits(str(fault))
        self.metrics.healthy.set(0)
        self.metrics.fatal_errors.labels(kind=fault.kind).inc()
        log.critical(
            "FAIL-STOP (%s): %s. No offset from this batch on is committed; /healthz answers "
            "503 and the worker exits with status %d. Remove the cause (free disk space, bring "
            "the broker back) and restart: it resumes from the last committed offset and loses "
            "no event.",
            fault.kind,
            fault.detail,
            EXIT_STATUS,
            exc_info=exc,
        )
        return fault

    async def halt(self, exc: BaseException) -> NoReturn:
        """:meth:`trip`, then crash the app after ``grace_s``; returns never (the caller's task
        is cancelled as the worker stops), so the caller takes no further event."""
        fault = self.trip(exc)
        await asyncio.sleep(self.grace_s)
        await self.app.crash(fault)
        await asyncio.Event().wait()
        raise AssertionError("unreachable: the event is never set")
