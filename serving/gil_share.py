"""A background thread's share of the interpreter lock, kept small so requests keep their speed.

A scorer's requests are mostly Python between short torch operators, so they need the GIL
nearly all the time. A watcher thread preparing a delta (checks, id-map splices, decoding) is
the same kind of work: each time a request's operator lets go of the GIL, the watcher takes it
and runs on, and the request waits. Measured at 4M items (``ops/bench/scoring_deltas.py``):
requests overlapping a delta's 3 ms of preparation took 5.8 ms instead of 3.4 ms. Lowering the
thread's OS priority does not help (both threads have a core; they wait on the lock, not the CPU).

:class:`GilShare` spreads such work out: while :meth:`GilShare.limited` is active, a profile hook
on the calling thread (``sys.setprofile``: that thread only) sleeps after every ``slice_s`` of
the thread's CPU time for as long as keeps its share of wall time at ``share``. Waiting costs no
CPU time, so a blocking poll inside the block is not slowed. The work takes ``1 / share`` times
as long; a request overlapping it loses about ``share`` of its time at most.
Given ``busy`` (true while a request is being scored: :class:`serving.scorer.InFlight`), the
limit holds only then; between requests the thread runs at ``idle_share``, still pausing briefly
after each slice so that a request that arrives takes the GIL within a slice, not after the
interpreter's 5 ms switch interval. A worker between requests applies deltas at nearly full
speed; under steady load, at ``share``.
Never use it while holding a lock that requests wait for: the sleeps would stall them.

>>> gil = GilShare(share=0.5, slice_s=0.001)
>>> with gil.limited():
...     began = time.perf_counter()
...     total = sum(sum(range(2_000)) for _ in range(400))
...     took = time.perf_counter() - began
>>> gil.slept_s > 0 and took > gil.slept_s
True
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

IDLE_SHARE = 0.8  # with ``busy`` given, the share between requests: a pause of 0.05 ms per slice


class GilShare:
    def __init__(
        self,
        share: float = 0.2,
        slice_s: float = 0.0002,
        busy: Callable[[], bool] | None = None,
        idle_share: float = IDLE_SHARE,
    ) -> None:
        if not (0.0 < share <= 1.0 and 0.0 < idle_share <= 1.0):
            raise ValueError("shares must be in (0, 1]")
        self.share, self.slice_s, self.busy = share, slice_s, busy
        self._ratio = (1.0 - share) / share  # seconds asleep per second of work
        self._idle_ratio = (1.0 - idle_share) / idle_share  # ... while no request is in flight
        self._since = 0.0
        self.slept_s = 0.0  # in all, for metrics and benchmarks

    @contextmanager
    def limited(self) -> Iterator[None]:
        """Limit the calling thread's share within the block (nothing at a share of 1)."""
        if self.share >= 1.0:
            yield
            return
        before = sys.getprofile()
        self._since = time.thread_time()
        sys.setprofile(self._profile)
        try:
            yield
        finally:
            sys.setprofile(before)

    def _profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "c_return" and event != "return":
            return
        worked = time.thread_time() - self._since
        if worked >= self.slice_s:
            idle = self.busy is not None and not self.busy()
            pause = worked * (self._idle_ratio if idle else self._ratio)
            time.sleep(pause)
            self.slept_s += pause
            self._since = time.thread_time()
