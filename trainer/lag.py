"""The trainer's consumer lag, sampled off the training loop.

Lag is end offset − the next offset the trainer will train, per partition it reads. Asking the
broker for end offsets blocks: kafka-python's ``end_offsets`` waits up to its request timeout
(30 s) while a partition's leader is away, and ``position`` waits for KIP-320 validation after a
leader change. Asked from the loop, a broker killed mid-replay once cost the trainer 30 s on every
step (``tests/integration/test_broker_failover.py``). So a :class:`LagWatcher` asks on a thread of
its own, with a client of its own; the loop only hands it what it consumed
(:meth:`LagWatcher.seen`), which never blocks. A broker away delays the gauge, never training.

>>> lags = []
>>> ends = {0: 10, 1: 4}
>>> watcher = LagWatcher(lambda ps: ({p: ends[p] for p in ps}, {p: 0 for p in ps}), lags.append)
>>> watcher.seen({0: 6, 1: None})  # partition 0 trained up to offset 6; nothing of partition 1
>>> watcher.sample_once()
{0: 3, 1: 4}
>>> lags
[{0: 3, 1: 4}]
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from contracts.metrics import OFFSETS_TIMEOUT_S, partition_offsets

log = logging.getLogger("twinstream.trainer")
LAG_EVERY_S = 5.0

# partitions → (end offset, beginning offset) of each
Offsets = Callable[[Sequence[int]], tuple[Mapping[int, int], Mapping[int, int]]]


class LagWatcher:
    """Every ``every_s`` on its own thread (after :meth:`start`): the lag of the partitions last
    :meth:`seen`, handed to ``on_lag`` (partition → messages). ``offsets`` asks the broker."""

    def __init__(
        self,
        offsets: Offsets,
        on_lag: Callable[[dict[int, int]], None],
        every_s: float = LAG_EVERY_S,
    ) -> None:
        self.offsets, self.on_lag, self.every_s = offsets, on_lag, every_s
        self._last: dict[int, int | None] = {}  # partition → last offset trained (None: none)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trainer-lag", daemon=True)

    def seen(self, last_trained: Mapping[int, int | None]) -> None:
        """The partitions the trainer reads now and the last offset it consumed of each."""
        with self._lock:
            self._last = dict(last_trained)

    def sample_once(self) -> dict[int, int] | None:
        """Ask the broker once; None when it did not answer (tried again next time)."""
        with self._lock:
            last = dict(self._last)
        if not last:
            self.on_lag({})
            return {}
        asked = time.monotonic()
        try:
            ends, starts = self.offsets(sorted(last))
        except Exception as err:  # kafka-python raises many types; lag is best effort
            log.info("trainer lag not sampled (%.1f s): %r", time.monotonic() - asked, err)
            return None
        lags = {p: max(0, ends[p] - _next(o, starts[p])) for p, o in last.items()}
        self.on_lag(lags)
        return lags

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=OFFSETS_TIMEOUT_S + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample_once()


def _next(last_trained: int | None, beginning: int) -> int:
    return beginning if last_trained is None else max(beginning, last_trained + 1)


class TopicOffsets:
    """End and beginning offsets of one topic's partitions, from a client of its own (no group;
    created on first use, on the watcher's thread)."""

    def __init__(self, kafka_config: Mapping[str, Any], topic: str) -> None:
        self.kafka_config, self.topic = dict(kafka_config), topic
        self._consumer: KafkaConsumer | None = None

    def __call__(self, partitions: Sequence[int]) -> tuple[dict[int, int], dict[int, int]]:
        if self._consumer is None:
            self._consumer = KafkaConsumer(**self.kafka_config, enable_auto_commit=False)
        tps = [TopicPartition(self.topic, p) for p in partitions]
        ends, starts = partition_offsets(self._consumer, tps)
        return {tp.partition: ends[tp] for tp in tps}, {tp.partition: starts[tp] for tp in tps}

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
