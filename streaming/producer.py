"""Publishing events to Kafka with kafka-python.

>>> # producer = EventProducer(Settings.from_env()); producer.send(event); producer.flush()
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Any

from kafka import KafkaProducer

from contracts.schema import Event
from contracts.settings import Settings

# Idempotent delivery: a retried batch (e.g. NotLeaderForPartition right after topic creation)
# can neither duplicate nor overtake the batches behind it, so per-user event order holds.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    "linger_ms": 20,
    "batch_size": 512 * 1024,
    "max_request_size": 16 * 1024 * 1024,
    "compression_type": None,
    "retries": 10,
}


class DeliveryError(RuntimeError):
    """Some messages could not be delivered; ``errors`` holds the first few exceptions."""

    def __init__(self, failed: int, errors: list[BaseException]) -> None:
        super().__init__(f"{failed} messages failed, first: {errors[0]!r}")
        self.failed = failed
        self.errors = errors


class EventProducer:
    """Sends events keyed by user id; counts delivery failures and raises them on ``flush``."""

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        self.settings = settings
        config = PRODUCER_DEFAULTS | overrides
        self._producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, **config)
        self._failed = 0
        self._errors: list[BaseException] = []
        self.sent = 0

    def send(self, event: Event, topic: str | None = None) -> None:
        self.send_raw(event.key, event.to_json(), topic)

    def send_raw(self, key: bytes | None, value: bytes, topic: str | None = None) -> None:
        future = self._producer.send(topic or self.settings.topics.events, key=key, value=value)
        future.add_errback(self._on_error)
        self.sent += 1

    def send_many(self, events: Iterable[Event], topic: str | None = None) -> int:
        n = 0
        for event in events:
            self.send(event, topic)
            n += 1
        return n

    def _on_error(self, exc: BaseException) -> None:
        self._failed += 1
        if len(self._errors) < 5:
            self._errors.append(exc)

    def flush(self, timeout: float | None = 60.0) -> None:
        self._producer.flush(timeout=timeout)
        if self._failed:
            failed, errors = self._failed, self._errors
            self._failed, self._errors = 0, []
            raise DeliveryError(failed, errors)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._producer.close()

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
