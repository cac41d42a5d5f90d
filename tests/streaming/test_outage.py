"""BrokerWait and Acknowledgements on a fake clock: when a broker outage is announced, the
backoff between tries, when the wait gives up, and when a publisher counts as stalled.

No broker and no real time: the clock moves only when the wait sleeps or a test moves it.
"""

from __future__ import annotations

import time

import pytest

from streaming.outage import Acknowledgements, BrokerAway, BrokerWait

BOOTSTRAP = "127.0.0.1:19092"


class FakeClock:
    """Monotonic and wall clock at once; ``sleep`` moves it on and records the pause."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.pauses: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


def make_wait(clock: FakeClock, said: list[str], limit_s: float = 60.0) -> BrokerWait:
    return BrokerWait(
        BOOTSTRAP,
        limit_s=limit_s,
        limit_name="--broker-wait-s",
        say=said.append,
        clock=clock,
        wall=clock,
        sleep=clock.sleep,
    )


def test_trouble_shorter_than_quiet_passes_silently(clock: FakeClock) -> None:
    said: list[str] = []
    wait = make_wait(clock, said)
    wait.failing()
    clock.now += wait.quiet_s - 0.1
    wait.failing()
    wait.recovered()
    assert said == []


def test_an_outage_is_announced_once_with_its_start_and_once_when_over(clock: FakeClock) -> None:
    said: list[str] = []
    wait = make_wait(clock, said)
    wait.failing(since=clock.now - 7.0)  # no acknowledgement for 7 s: past quiet_s already
    for _ in range(10):
        wait.pause()
        wait.failing()
    assert len(said) == 1
    assert said[0].startswith(f"broker {BOOTSTRAP} unreachable since ")
    assert said[0].endswith("; retrying (gives up after 60 s, --broker-wait-s)")
    clock.now += 0.5
    wait.recovered()
    lasted = 7.0 + sum(clock.pauses) + 0.5
    assert said[1] == f"broker {BOOTSTRAP} back after {lasted:.0f} s; carrying on"
    wait.recovered()  # nothing more to say
    assert len(said) == 2


def test_the_announced_start_is_the_wall_time_of_the_last_sign_of_life(clock: FakeClock) -> None:
    said: list[str] = []
    wait = make_wait(clock, said)
    last_ack = 1_764_000_000.0
    clock.now = last_ack + 10.0
    wait.failing(since=last_ack)
    expected = time.strftime("%H:%M:%S", time.localtime(last_ack))
    assert f"unreachable since {expected};" in said[0]


def test_pauses_double_up_to_the_cap_and_never_run_past_the_give_up(clock: FakeClock) -> None:
    wait = make_wait(clock, [], limit_s=10.0)
    wait.failing()
    with pytest.raises(BrokerAway):
        while True:
            wait.pause()
            wait.failing()
    assert clock.pauses == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0, 0.25]
    assert sum(clock.pauses) == pytest.approx(10.0)


def test_gives_up_when_the_trouble_has_lasted_the_limit(clock: FakeClock) -> None:
    wait = make_wait(clock, [], limit_s=30.0)
    wait.failing(since=clock.now - 29.9)
    clock.now += 0.1
    with pytest.raises(BrokerAway) as raised:
        wait.failing()
    assert str(raised.value) == (
        f"broker {BOOTSTRAP} still unreachable after 30 s (--broker-wait-s 30)"
    )
    assert raised.value.away_s == pytest.approx(30.0)


def test_a_recovery_starts_the_next_outage_afresh(clock: FakeClock) -> None:
    said: list[str] = []
    wait = make_wait(clock, said, limit_s=20.0)
    wait.failing(since=clock.now - 15.0)
    wait.recovered()
    clock.now += 100.0
    wait.failing(since=clock.now - 15.0)  # a new outage: 15 s, not 115 s, so no give-up
    assert clock.pauses == [] and wait.pause_s() == 0.25
    assert len(said) == 3


def test_retry_calls_until_it_returns(clock: FakeClock) -> None:
    said: list[str] = []
    wait = make_wait(clock, said)
    answers = iter([TimeoutError(), TimeoutError(), TimeoutError(), TimeoutError(), "up"])

    def call() -> str:
        answer = next(answers)
        if isinstance(answer, BaseException):
            clock.now += 2.0  # each failed connection attempt takes a while
            raise answer
        return answer

    assert wait.retry(call, (TimeoutError,)) == "up"
    assert clock.pauses == [0.25, 0.5, 1.0, 2.0]
    assert len(said) == 2  # 8 s of trouble: announced, then back


def test_retry_gives_up_on_a_broker_that_never_answers(clock: FakeClock) -> None:
    wait = make_wait(clock, [], limit_s=10.0)
    calls = 0

    def call() -> None:
        nonlocal calls
        calls += 1
        raise TimeoutError

    with pytest.raises(BrokerAway):
        wait.retry(call, (TimeoutError,))
    assert sum(clock.pauses) == pytest.approx(10.0) and calls == len(clock.pauses) + 1


def test_retry_lets_other_errors_through_at_once(clock: FakeClock) -> None:
    wait = make_wait(clock, [])

    def call() -> None:
        raise PermissionError("not authorised")

    with pytest.raises(PermissionError):
        wait.retry(call, (TimeoutError,))
    assert clock.pauses == []


def test_the_wait_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        BrokerWait(BOOTSTRAP, limit_s=0)


def test_a_publisher_stalls_only_with_records_pending_and_no_acknowledgement(
    clock: FakeClock,
) -> None:
    acks = Acknowledgements(clock)
    clock.now += 100.0
    assert not acks.stalled(5.0)  # idle: nothing pending
    acks.record_sent()  # after the idle time: the silence starts now
    acks.record_sent()
    clock.now += 4.9
    assert not acks.stalled(5.0)
    acks.record_acknowledged()
    clock.now += 4.9
    assert not acks.stalled(5.0)  # the acknowledgement was progress
    clock.now += 0.1
    assert acks.stalled(5.0) and acks.pending == 1
    acks.record_failed(RuntimeError("refused"))
    assert not acks.stalled(5.0) and acks.pending == 0
    assert (acks.sent, acks.acknowledged, acks.failed) == (2, 1, 1)


def test_only_the_first_errors_are_kept() -> None:
    acks = Acknowledgements()
    for i in range(Acknowledgements.MAX_ERRORS + 3):
        acks.record_sent()
        acks.record_failed(RuntimeError(str(i)))
    assert acks.failed == Acknowledgements.MAX_ERRORS + 3
    assert [str(e) for e in acks.errors] == [str(i) for i in range(Acknowledgements.MAX_ERRORS)]
