"""Waiting out a broker that is away: when to say so, how long to pause, when to give up.

A publisher (``twinstream replay``, ``twinstream publish``) keeps trying while the broker does not
answer. :class:`BrokerWait` is the policy, pure logic over an injected clock: trouble shorter than
``quiet_s`` passes silently (a slow acknowledgement is no outage); then it says once, in one
plain line, that the broker is unreachable and how long it will keep trying; it pauses between
tries with a doubling backoff; it says once when the broker is back; and when the trouble has
lasted ``limit_s`` it raises :class:`BrokerAway`. :class:`Acknowledgements` counts what became of
the records handed to the producer and when the broker last acknowledged one, which is how a
publisher notices a broker that has gone quiet.

>>> class Clock:  # a clock that moves only when slept on
...     now = 0.0
...     def __call__(self): return self.now
...     def sleep(self, seconds): self.now += seconds
>>> clock = Clock()
>>> wait = BrokerWait("127.0.0.1:19092", limit_s=60, say=print, clock=clock, sleep=clock.sleep)
>>> wait.failing()  # the first failed try: quiet for now
>>> clock.sleep(6)
>>> wait.failing()  # doctest: +ELLIPSIS
broker 127.0.0.1:19092 unreachable since ...; retrying (gives up after 60 s)
>>> for _ in range(5):
...     wait.pause()  # 0.25, 0.5, 1 and 2 s, then 2 s each
>>> clock.now
11.75
>>> wait.recovered()
broker 127.0.0.1:19092 back after 12 s; carrying on
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

DEFAULT_BROKER_WAIT_S = 300.0  # how long a publisher keeps trying before it gives up
QUIET_S = 5.0  # no acknowledgement for this long, with records pending, counts as trouble


class BrokerAway(RuntimeError):
    """The broker stayed unreachable for the whole wait."""

    def __init__(self, bootstrap: str, away_s: float, limit: str) -> None:
        super().__init__(f"broker {bootstrap} still unreachable after {away_s:.0f} s{limit}")
        self.bootstrap = bootstrap
        self.away_s = away_s


def _say_on_stderr(line: str) -> None:
    tqdm.write(line, file=sys.stderr)  # above a progress bar, if one is showing


@dataclass
class BrokerWait:
    """The policy for a broker that does not answer (see the module docstring).

    ``limit_name`` says how the user sets ``limit_s`` (a flag, a setting) in the lines it prints.
    """

    bootstrap: str
    limit_s: float = DEFAULT_BROKER_WAIT_S
    limit_name: str = ""
    quiet_s: float = QUIET_S
    first_pause_s: float = 0.25
    max_pause_s: float = 2.0
    say: Callable[[str], None] = _say_on_stderr
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    _since: float | None = field(default=None, init=False, repr=False)
    _announced: bool = field(default=False, init=False, repr=False)
    _pauses: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.limit_s <= 0:
            raise ValueError("the broker wait must be positive")

    @property
    def limit(self) -> str:
        """How the wait ends, for the lines it prints: ``gives up after 300 s, --broker-wait-s``."""
        name = f", {self.limit_name}" if self.limit_name else ""
        return f"gives up after {self.limit_s:g} s{name}"

    def failing(self, since: float | None = None) -> None:
        """A try failed, or nothing was acknowledged since ``since`` (default: now, this clock).

        The first call of a trouble fixes its start; a later call announces it once it has lasted
        ``quiet_s`` and raises :class:`BrokerAway` once it has lasted ``limit_s``.
        """
        now = self.clock()
        if self._since is None:
            self._since = min(now, since) if since is not None else now
        lasted = now - self._since
        if lasted >= self.limit_s:
            limit = f" ({self.limit_name} {self.limit_s:g})" if self.limit_name else ""
            raise BrokerAway(self.bootstrap, lasted, limit)
        if not self._announced and lasted >= min(self.quiet_s, self.limit_s):
            self._announced = True
            started = self.wall() - lasted
            clock_time = time.strftime("%H:%M:%S", time.localtime(started))
            self.say(
                f"broker {self.bootstrap} unreachable since {clock_time}; retrying ({self.limit})"
            )

    def pause_s(self) -> float:
        """The next pause: doubling from ``first_pause_s`` up to ``max_pause_s``, and never past
        the moment the wait gives up."""
        backoff = min(self.first_pause_s * 2**self._pauses, self.max_pause_s)
        if self._since is None:
            return backoff
        left = self._since + self.limit_s - self.clock()
        return max(0.0, min(backoff, left))

    def pause(self) -> None:
        """Sleep before the next try."""
        pause = self.pause_s()
        self._pauses += 1
        self.sleep(pause)

    def recovered(self) -> None:
        """A try succeeded: the trouble, if any, is over (said so when it had been announced)."""
        if self._since is None:
            return
        if self._announced:
            lasted = self.clock() - self._since
            self.say(f"broker {self.bootstrap} back after {lasted:.0f} s; carrying on")
        self._since, self._announced, self._pauses = None, False, 0

    def retry(self, call: Callable[[], T], retriable: tuple[type[BaseException], ...]) -> T:
        """``call()`` until it returns, pausing between tries that raise one of ``retriable``."""
        while True:
            started = self.clock()
            try:
                result = call()
            except retriable:
                self.failing(since=started)  # a failed try may take a while (a connect timeout)
                self.pause()
                continue
            self.recovered()
            return result


class Acknowledgements:
    """What became of the records handed to a producer: acknowledged, failed, still pending; and
    when the broker last showed progress. The producer's I/O thread records the outcomes."""

    MAX_ERRORS = 5  # the first failures kept for the error message

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.sent = 0
        self.acknowledged = 0
        self.failed = 0
        self.errors: list[BaseException] = []
        self.last_progress = clock()
        self._lock = threading.Lock()  # outcomes come from the I/O thread, now and then this one

    @property
    def pending(self) -> int:
        return self.sent - self.acknowledged - self.failed

    def record_sent(self) -> None:
        if self.pending == 0:
            self.last_progress = self.clock()  # an idle producer was not waiting for anything
        self.sent += 1

    def record_acknowledged(self, _metadata: object = None) -> None:
        with self._lock:
            self.acknowledged += 1
            self.last_progress = self.clock()

    def record_failed(self, error: BaseException) -> None:
        with self._lock:
            self.failed += 1
            if len(self.errors) < self.MAX_ERRORS:
                self.errors.append(error)

    def stalled(self, quiet_s: float) -> bool:
        """Records are pending and none was acknowledged for ``quiet_s``."""
        return self.pending > 0 and self.clock() - self.last_progress >= quiet_s
