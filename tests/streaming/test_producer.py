"""EventProducer against a fake kafka-python producer on a fake clock: it waits out a broker that
stops acknowledging, hands nothing twice to kafka-python, gives up after the wait and closes
without waiting for the broker, and fails at once on an event the broker refuses for good."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, TopicAuthorizationFailedError
from kafka.future import Future

from contracts.settings import Settings
from streaming.outage import BrokerAway, BrokerWait
from streaming.producer import DeliveryError, EventProducer
from tests.support.events import event

SETTINGS = Settings()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.on_sleep: Callable[[], None] = lambda: None

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.on_sleep()


class FakeSender:
    def __init__(self, kafka: FakeKafka) -> None:
        self.kafka = kafka

    def force_close(self) -> None:
        self.kafka.force_closed = True
        self.kafka.fail_pending(KafkaTimeoutError("producer closed forcefully"))


class FakeKafka:
    """What EventProducer uses of KafkaProducer; a test acknowledges or fails the records."""

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.records: list[bytes] = []
        self.pending: list[Future] = []
        self.send_errors: list[Exception] = []  # raised by the next send() calls, in turn
        self.closed = self.force_closed = False
        self._sender = FakeSender(self)

    def send(self, topic: str, key: bytes | None = None, value: bytes = b"") -> Future:
        if self.send_errors:
            raise self.send_errors.pop(0)
        self.records.append(value)
        future = Future()
        self.pending.append(future)
        return future

    def acknowledge_all(self) -> None:
        for future in self.pending:
            future.success("metadata")
        self.pending = []

    def fail_pending(self, error: Exception) -> None:
        for future in self.pending:
            future.failure(error)
        self.pending = []

    def flush(self, timeout: float | None = None) -> None:
        if self.pending:
            raise KafkaTimeoutError("Timeout waiting for future")

    def close(self, timeout: float | None = None) -> None:
        self.flush(timeout)
        self.closed = True


@pytest.fixture()
def fakes(monkeypatch: pytest.MonkeyPatch) -> list[FakeKafka]:
    made: list[FakeKafka] = []

    def make(**config: Any) -> FakeKafka:
        made.append(FakeKafka(**config))
        return made[-1]

    monkeypatch.setattr("streaming.producer.KafkaProducer", make)
    return made


def make_producer(clock: FakeClock, said: list[str], limit_s: float = 60.0) -> EventProducer:
    wait = BrokerWait("b:9092", limit_s, say=said.append, clock=clock, sleep=clock.sleep)
    return EventProducer(SETTINGS, wait)


def test_waits_for_acknowledgements_and_carries_on_without_sending_twice(
    fakes: list[FakeKafka],
) -> None:
    clock, said = FakeClock(), []
    producer = make_producer(clock, said)
    kafka = fakes[0]
    assert kafka.config["delivery_timeout_ms"] > 60_000  # batches outlive the wait
    producer.send(event(ts=1.0))
    producer.send(event(ts=2.0))
    kafka.acknowledge_all()
    producer.send(event(ts=3.0))  # then the broker goes quiet
    clock.now += 6.0
    clock.on_sleep = lambda: kafka.acknowledge_all() if clock.now > 20.0 else None
    producer.send(event(ts=4.0))  # waits until the broker acknowledges again
    assert clock.now > 20.0 and len(said) == 2
    assert said[0].startswith("broker b:9092 unreachable since ")
    assert said[1].startswith("broker b:9092 back after ")
    kafka.acknowledge_all()
    producer.close()
    assert len(kafka.records) == producer.sent == producer.acknowledged == 4
    assert kafka.closed and not kafka.force_closed


def test_a_send_that_times_out_is_tried_again_not_duplicated(fakes: list[FakeKafka]) -> None:
    clock, said = FakeClock(), []
    producer = make_producer(clock, said)
    kafka = fakes[0]
    kafka.send_errors = [KafkaTimeoutError("Failed to update metadata")] * 3
    producer.send(event(ts=1.0))
    assert len(kafka.records) == producer.sent == 1
    assert said == [] and clock.now > 0  # a short trouble: paused, not announced


def test_gives_up_after_the_wait_and_closes_without_waiting(fakes: list[FakeKafka]) -> None:
    clock, said = FakeClock(), []
    producer = make_producer(clock, said, limit_s=10.0)
    kafka = fakes[0]
    producer.send(event(ts=1.0))
    kafka.acknowledge_all()
    producer.send(event(ts=2.0))
    producer.send(event(ts=3.0))
    clock.now += 6.0
    with pytest.raises(BrokerAway), producer:
        producer.flush()
    assert clock.now == pytest.approx(10.0) and len(said) == 1
    assert kafka.force_closed and kafka.closed
    assert (producer.sent, producer.acknowledged) == (3, 1)


def test_a_broker_away_at_the_start_is_waited_for(
    fakes: list[FakeKafka], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock, said = FakeClock(), []
    attempts: list[float] = []

    def make(**config: Any) -> FakeKafka:
        attempts.append(clock.now)
        clock.now += 2.0  # bootstrap_timeout_ms
        if len(attempts) < 5:
            raise KafkaTimeoutError("Unable to bootstrap from b:9092")
        return FakeKafka(**config)

    monkeypatch.setattr("streaming.producer.KafkaProducer", make)
    producer = make_producer(clock, said)
    assert len(attempts) == 5 and len(said) == 2
    producer.close()


def test_an_event_too_large_fails_at_once(fakes: list[FakeKafka]) -> None:
    producer = make_producer(FakeClock(), [])
    fakes[0].send_errors = [MessageSizeTooLargeError("The message is 20000000 bytes")]
    with pytest.raises(DeliveryError, match=r"1 event refused \(MessageSizeTooLargeError"):
        producer.send(event(ts=1.0))


def test_a_refused_delivery_fails_the_next_send(fakes: list[FakeKafka]) -> None:
    producer = make_producer(FakeClock(), [])
    kafka = fakes[0]
    producer.send(event(ts=1.0))
    producer.send(event(ts=2.0))
    kafka.fail_pending(TopicAuthorizationFailedError("events"))
    with pytest.raises(DeliveryError, match="2 events refused") as raised, producer:
        producer.send(event(ts=3.0))
    assert len(raised.value.errors) == 2 and len(kafka.records) == 2 and kafka.closed
