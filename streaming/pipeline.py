"""Batches in flight: the next batch is applied while the broker acknowledges the last one's.

A batch of ``events`` makes two sets of records, in order: its samples, dead letters and copies,
then (once the broker holds all of those) its changelog records and offset markers; once the
broker holds those too, the local stores commit and the batch's offsets may be committed. Each
wait is a round trip to the broker. :class:`InFlight` keeps up to two batches between those
steps, so that both round trips of a batch overlap the work of the next one::

    push(N+1): apply N+1 in memory, send its samples   (the broker acknowledges N's records)
               finish N-1: its changelog acknowledged -> stores commit, offsets released
               seal N: its samples acknowledged -> its changelog sent

What keeps this exact:

- a batch's changelog is sent only once its own samples are acknowledged, and its stores commit
  (and its offsets go to Faust) only once its changelog is; batches finish in the order applied;
- a batch applied in memory reads the states the batches before it left, committed or not
  (:attr:`feature_store.PartitionWorker.applied`);
- whatever else writes the stores (the timer's tick, the clustering sweep, a rebalance) drains
  first: every batch in flight is made durable under the stores' lock before it goes on;
- a failure in any step (a refused record, a store write) stops the worker
  (:mod:`streaming.failstop`); nothing of the failed batch or of the batches after it is
  committed, and a restart applies them again from the committed offsets.

With ``Settings.ingest_overlap`` off, the agent drains after each push (one batch at a time).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from streaming.sink import Acknowledgements, Delivery

Done = Callable[[], None]


def nothing() -> None:
    return None


@dataclass
class Staged:
    """One batch in flight: its applied partitions (``streaming.ingest.Applied``), what to run
    once it is durable, when it started, the acknowledgements its samples owe, then (sealed) its
    changelog deliveries, one per partition, and what those owe."""

    applied: list[Any]
    done: Done
    started: float
    sent: Acknowledgements = field(default_factory=Acknowledgements)
    sealed: bool = False
    markers: list[Delivery | None] = field(default_factory=list)
    logged: Acknowledgements = field(default_factory=Acknowledgements)


Step = Callable[[Staged], Awaitable[None]]


class InFlight:
    """The batches applied and not yet durable, oldest first. ``seal`` (samples acknowledged:
    send the changelog) and ``finish`` (changelog acknowledged: commit) are the ingest
    service's steps; whoever calls these holds the stores' lock."""

    def __init__(self, seal: Step, finish: Step) -> None:
        self._seal, self._finish = seal, finish
        self.batches: deque[Staged] = deque()

    def __bool__(self) -> bool:
        return bool(self.batches)

    def add(self, staged: Staged) -> None:
        """A batch applied in memory, its samples sent."""
        self.batches.append(staged)

    async def advance(self) -> None:
        """Every batch but the newest one step on: the sealed ones finished, the others
        sealed (at most one batch sealed and the newest staged are left)."""
        while len(self.batches) > 1 and self.batches[0].sealed:
            await self._finish(self.batches.popleft())
        for staged in list(self.batches)[:-1]:
            await self._seal_once(staged)

    async def step(self) -> None:
        """One step of the oldest batch: finish it if sealed, else seal it."""
        if self.batches and self.batches[0].sealed:
            await self._finish(self.batches.popleft())
        elif self.batches:
            await self._seal_once(self.batches[0])

    async def drain(self) -> None:
        """Every batch held made durable, oldest first."""
        while self.batches:
            await self.step()

    async def _seal_once(self, staged: Staged) -> None:
        if not staged.sealed:
            await self._seal(staged)
            staged.sealed = True


async def yield_to_sender(turns: int = 3) -> None:
    """Let the producer's sender task run a few turns of the event loop, so the records just
    queued go out to the broker before the next batch's work holds the loop."""
    for _ in range(turns):
        await asyncio.sleep(0)
