"""Publishing events to Kafka with kafka-python, waiting out a broker that is away.

While the broker does not answer (no connection at the start, no metadata, no acknowledgement,
a full buffer), :class:`EventProducer` keeps trying under its :class:`~streaming.outage.BrokerWait`:
it says so in one line once the silence has lasted ``quiet_s``, stops handing over new records
until acknowledgements come again, says when the broker is back, and raises
:class:`~streaming.outage.BrokerAway` after the wait's limit. It never sends a record twice: the
records it handed over stay in kafka-python's buffer, whose batches outlive the wait
(``delivery_timeout_ms``) and are retried by the idempotent producer, which the broker recognises
by producer id and sequence number. A record the broker refuses for good (too large, not
authorised) raises :class:`DeliveryError` at the next send or flush.

>>> # producer = EventProducer(Settings.from_env()); producer.send(event); producer.flush()
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError, RetriableError

from contracts.schema import Event
from contracts.settings import Settings
from streaming.outage import Acknowledgements, BrokerAway, BrokerWait

# Idempotent delivery: a retried batch (e.g. NotLeaderForPartition right after topic creation, or
# after the broker came back) can neither duplicate nor overtake the batches behind it, so
# per-user event order holds.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    "linger_ms": 20,
    "batch_size": 512 * 1024,
    "max_request_size": 16 * 1024 * 1024,
    "compression_type": None,
}
# what a call raises while the broker is away (no connection, no metadata, topics without leaders)
RETRIABLE = (RetriableError, TimeoutError)
FLUSH_SLICE_S = 1.0  # flush waits this long at a time, then checks on the broker
# A batch pending when the broker fell silent was created at most moments before its last
# acknowledgement: with a delivery timeout of the wait's limit plus this margin, none expires (and
# none is dropped) while the wait goes on.
EXPIRY_MARGIN_S = 2.0
GRACE_ON_ERROR_S = 5.0  # leaving on another error, the producer still delivers this long


def waiting_config(wait: BrokerWait) -> dict[str, Any]:
    """kafka-python settings that leave the waiting to ``wait``: calls that block return within
    seconds, reconnects are tried every second, batches are retried until the wait gives up.

    >>> waiting_config(BrokerWait("b:9092", limit_s=10))["delivery_timeout_ms"]
    12000
    """
    delivery_ms = int((wait.limit_s + EXPIRY_MARGIN_S) * 1000)
    return {
        "retries": float("inf"),  # bounded by delivery_timeout_ms
        "delivery_timeout_ms": delivery_ms,
        "request_timeout_ms": min(30_000, delivery_ms - PRODUCER_DEFAULTS["linger_ms"]),
        "max_block_ms": 1_000,
        "bootstrap_timeout_ms": 5_000,
        "reconnect_backoff_max_ms": 1_000,
    }


class DeliveryError(RuntimeError):
    """The broker refused some events for good; ``errors`` holds the first few exceptions."""

    def __init__(self, failed: int, errors: list[BaseException]) -> None:
        first = errors[0] if errors else None
        name = type(first).__name__
        detail = str(first) if str(first).startswith(name) else f"{name}: {first}"
        super().__init__(f"{failed:,} event{'s' if failed != 1 else ''} refused ({detail})")
        self.failed = failed
        self.errors = errors


class EventProducer:
    """Sends events keyed by user id; waits out a broker that is away (see the module)."""

    def __init__(
        self, settings: Settings, wait: BrokerWait | None = None, **overrides: Any
    ) -> None:
        self.settings = settings
        self.wait = wait or BrokerWait(settings.bootstrap_servers)
        self.acks = Acknowledgements(self.wait.clock)
        self._abandoned = False
        config = PRODUCER_DEFAULTS | waiting_config(self.wait) | overrides
        self._producer = self.wait.retry(
            lambda: KafkaProducer(**settings.kafka_config(), **config),
            RETRIABLE,
        )

    @property
    def sent(self) -> int:
        """Events handed over so far."""
        return self.acks.sent

    @property
    def acknowledged(self) -> int:
        """Events the broker has acknowledged (written to all in-sync replicas)."""
        return self.acks.acknowledged

    def send(self, event: Event, topic: str | None = None) -> None:
        self.send_raw(event.key, event.to_json(), topic)

    def send_raw(self, key: bytes | None, value: bytes, topic: str | None = None) -> None:
        self._check_refused()
        if self.acks.stalled(self.wait.quiet_s):
            self._wait_for_acknowledgements()
        topic = topic or self.settings.topics.events
        while True:
            try:
                future = self._producer.send(topic, key=key, value=value)
                break
            except KafkaTimeoutError:  # no metadata or a full buffer for max_block_ms
                self._after_failed_try(self.acks.last_progress if self.acks.pending else None)
            except KafkaError as err:  # e.g. too large, not authorised: trying again won't help
                raise DeliveryError(1, [err]) from None
        self.wait.recovered()
        self.acks.record_sent()
        future.add_callback(self.acks.record_acknowledged)
        future.add_errback(self.acks.record_failed)

    def send_many(self, events: Iterable[Event], topic: str | None = None) -> int:
        n = 0
        for event in events:
            self.send(event, topic)
            n += 1
        return n

    def flush(self) -> None:
        """Until every event handed over is acknowledged; raises :class:`DeliveryError` when the
        broker refused some, :class:`~streaming.outage.BrokerAway` when the wait gives up."""
        while True:
            try:
                self._producer.flush(timeout=FLUSH_SLICE_S)
                break
            except KafkaTimeoutError:
                self._check_refused()
                if self.acks.stalled(self.wait.quiet_s):
                    self._wait_for_acknowledgements()
        self._check_refused()

    def _wait_for_acknowledgements(self) -> None:
        """Hand nothing over until the broker acknowledges again (it retries what it holds)."""
        while self.acks.stalled(self.wait.quiet_s):
            self._after_failed_try(since=self.acks.last_progress)
            self._check_refused()
        self.wait.recovered()

    def _after_failed_try(self, since: float | None = None) -> None:
        try:
            self.wait.failing(since)
        except BrokerAway:
            self._abandon()
            raise
        self.wait.pause()

    def _check_refused(self) -> None:
        if self.acks.failed and not self._abandoned:
            raise DeliveryError(self.acks.failed, self.acks.errors)

    def _abandon(self, grace_s: float = 0.0) -> None:
        """Close, delivering what is pending for at most ``grace_s``, then dropping the rest."""
        self._abandoned = True
        with contextlib.suppress(KafkaTimeoutError):
            self._producer.close(timeout=grace_s)
            return
        # kafka-python's close(timeout) flushes first and raises when that times out, leaving the
        # producer open (its __del__ would then print a traceback); its sender's force_close()
        # is the Java client's close(0): fail what is pending, so that close completes.
        self._producer._sender.force_close()
        self._producer.close(timeout=GRACE_ON_ERROR_S)

    def close(self) -> None:
        """Flush, then close (on a failure, close without waiting long and raise it)."""
        if self._abandoned:
            return
        try:
            self.flush()
        except BaseException:
            if not self._abandoned:
                self._abandon(GRACE_ON_ERROR_S)
            raise
        self._producer.close()

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        elif not self._abandoned:
            self._abandon(GRACE_ON_ERROR_S)  # already failing: no long wait for the broker
