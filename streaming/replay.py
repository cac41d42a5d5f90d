"""Replay of historical events onto Kafka, in event-time order, as fast as possible or paced.

Pacing with ``speed=N`` sends an event when ``(ts - first_ts) / N`` seconds of wall time have
passed since the start. The same list of events always produces the same messages in the same
order per partition (keys are user ids, the partitioner is deterministic).

The progress bar counts the events the broker has acknowledged, not those handed to the producer:
while the broker is away it stands still (the producer says why, above it).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tqdm import tqdm

from contracts.schema import Event
from streaming.producer import EventProducer

PROGRESS_EVERY = 256  # events between two looks at the acknowledged count


@dataclass(frozen=True)
class ReplayStats:
    sent: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else float("inf")


def replay(
    events: Sequence[Event],
    producer: EventProducer,
    *,
    speed: float | None = None,
    limit: int | None = None,
    progress: bool = True,
    topic: str | None = None,
) -> ReplayStats:
    """Send ``events`` (already in event-time order) and flush; returns count and duration.

    Raises :class:`~streaming.outage.BrokerAway` when the broker stays away longer than the
    producer's wait, :class:`~streaming.producer.DeliveryError` when it refuses an event.
    """
    if speed is not None and speed <= 0:
        raise ValueError("speed must be positive")
    chosen = events[:limit] if limit is not None else events
    start = time.perf_counter()
    bar = tqdm(
        total=len(chosen),
        unit="ev",
        unit_scale=True,
        disable=not progress,
        file=sys.stderr,
        mininterval=0.5,
        desc="replay",
    )
    first_ts = chosen[0].ts if chosen else 0.0
    with bar:
        for i, event in enumerate(chosen):
            if speed is not None:
                _pace(start, (event.ts - first_ts) / speed)
            producer.send(event, topic)
            if i % PROGRESS_EVERY == 0:
                bar.update(producer.acknowledged - bar.n)
        producer.flush()
        bar.update(producer.acknowledged - bar.n)
    return ReplayStats(sent=len(chosen), seconds=time.perf_counter() - start)


def _pace(start: float, due_s: float) -> None:
    wait = start + due_s - time.perf_counter()
    if wait > 0:
        time.sleep(wait)
