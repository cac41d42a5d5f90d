"""When the online trainer's loop snapshots, logs and stops: its clock and its stop reasons.

A snapshot is due every ``snapshot_every_steps`` steps or ``snapshot_every_s`` seconds, and only
when something was trained since the last one. A run stops on a signal (or
:meth:`trainer.online.OnlineTrainer.stop`), after ``max_steps`` steps, or when no data came for
``idle_timeout_s``. Under ``torchrun`` rank 0's clock decides for every rank
(:meth:`trainer.distributed.Comm.agree`).

>>> clock = LoopClock(snapshot_every_s=None, snapshot_every_steps=50, log_every_s=10.0)
>>> clock.steps_due(trained=True, step=100), clock.time_due(clock.start + 3600)
(True, False)
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from trainer.config import RunReport, TrainerConfig
from trainer.distributed import Agreement


@dataclass
class LoopClock:
    """The loop's timers (monotonic seconds) and whether anything was trained since the last
    snapshot (``dirty``)."""

    snapshot_every_s: float | None
    snapshot_every_steps: int | None
    log_every_s: float
    delta_every_s: float | None = None
    start: float = field(default_factory=time.monotonic)
    last_data: float = field(init=False)
    last_snap: float = field(init=False)
    last_log: float = field(init=False)
    last_delta: float = field(init=False)
    dirty: bool = False
    delta_dirty: bool = False  # trained since the last delta

    def __post_init__(self) -> None:
        self.last_data = self.last_snap = self.last_log = self.last_delta = self.start

    @classmethod
    def of(cls, config: TrainerConfig) -> LoopClock:
        return cls(
            config.snapshot_every_s,
            config.snapshot_every_steps,
            config.log_every_s,
            config.delta_every_s,
        )

    def delta_due(self, now: float) -> bool:
        """A delta is due: trained since the last one, ``delta_every_s`` ago."""
        every = self.delta_every_s
        return self.delta_dirty and every is not None and now - self.last_delta >= every

    def delta_cut(self) -> None:
        self.delta_dirty, self.last_delta = False, time.monotonic()

    def time_due(self, now: float) -> bool:
        """A snapshot is due by time: trained since the last one, ``snapshot_every_s`` ago."""
        every = self.snapshot_every_s
        return self.dirty and every is not None and now - self.last_snap >= every

    def steps_due(self, trained: bool, step: int) -> bool:
        """A snapshot is due by steps: this step trained and is a multiple of the interval."""
        every = self.snapshot_every_steps
        return trained and every is not None and step % every == 0

    def idle(self, now: float, idle_timeout_s: float | None) -> bool:
        return idle_timeout_s is not None and now - self.last_data > idle_timeout_s

    def trained(self, began: float) -> None:
        self.dirty, self.delta_dirty, self.last_data = True, True, began

    def snapshotted(self) -> None:
        self.dirty, self.last_snap = False, time.monotonic()
        self.delta_cut()  # a checkpoint holds the state of the delta cut with it

    def log_due(self) -> bool:
        now = time.monotonic()
        if now - self.last_log < self.log_every_s:
            return False
        self.last_log = now
        return True

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def stop_reason(agreed: Agreement, report: RunReport, max_steps: int | None) -> str:
    """Why the run stops after this step ("" while it goes on).

    >>> stop_reason(Agreement(rows=0, stop=False, due=False, idle=True), RunReport(), None)
    'idle'
    """
    if agreed.stop:
        return "signal"
    if max_steps is not None and report.steps >= max_steps:
        return "max_steps"
    return "idle" if agreed.idle else ""


@contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """SIGTERM and SIGINT call ``stop`` (the loop finishes its step) while inside; only on the
    main thread, where Python lets signals be handled."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        stop()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
