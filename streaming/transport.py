"""Faust's aiokafka transport (URL scheme ``twinstream://``) with a short broker fetch wait, Faust's
own partition assignor, an idempotent producer and commits that can be refused.

aiokafka keeps one fetch request in flight per broker, and a partition whose fetched records are
still buffered is left out of the next request. When the records of ``events`` are all buffered,
the request that goes out carries only idle partitions (``score-requests``, Faust's leader topic),
and the broker holds it for ``fetch_max_wait_ms``, which Faust fixes at 1,500 ms; events that
arrive meanwhile wait with it. Measured at 2,000 events/s: stalls of 1.0-1.5 s several times a
minute, each followed by ~3,200 events at once. With a 100 ms wait a request of idle partitions
returns within 100 ms, and the next one carries the events; an idle worker sends ten small fetch
requests a second instead of one.

Its producer compresses its record batches when ``worker_compression`` says (none by default:
zstd makes a lifelong user's samples about 3x smaller; it cost a fifth of the worker's throughput on
short histories and raised it on 10k-behaviour users; BENCHMARKS.md) and is idempotent.

When a broker dies, a record batch it had already copied to its followers may never be
acknowledged; the producer sends it again to the new leader, which without
idempotence writes it a second time (a sample trained twice). With it, the new leader recognises
the batch by its producer id and sequence number and keeps one copy.

Its consumer's group assigns partitions with Faust's own assignor (``app.assignor``). Faust's
driver takes it only for an app with tables or standby replicas, and otherwise aiokafka's
round-robin, which deals out every topic's partitions in turn: with three workers partition p of
``events`` and of ``score-requests`` land on different workers, and the request is answered from
a worker without the user's state. Faust's assignor gives the partitions of topics with the same
number of partitions to the same worker (``events`` and ``score-requests`` co-partitioned), and
tells every worker which worker has each partition (``app.router``, by which ``POST /score``
finds the owner: :mod:`streaming.views`). Every worker of a group must use it: a worker on the
round-robin protocol cannot join a group on Faust's, and the other way round.

Its consumer hands the records of the topics an app diverts (:class:`Diverted`, the ingest
agent's ``events``) to the app as one :class:`FetchedBatch` per fetch, every partition's records
together, instead of turning each record into a Faust message, event and acknowledgement (about
150 µs per record, most of a worker's cost): the app acknowledges a batch's last offset per
partition once it has applied them (:meth:`Consumer.ack_batch`), and Faust commits that offset
as it commits its own. A batch fetched before a rebalance (an older consumer generation) is
dropped unapplied: the partition is fetched again from its committed offset.

Its consumer commits no offset once told to refuse (:meth:`Consumer.refuse_commits`): a worker
that could not write a batch's state stops (:mod:`streaming.failstop`), and every commit Faust
would still make on its way out (the periodic one, the one on stop, the one on a rebalance) is
refused, so the group resumes before that batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiokafka
from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from contracts.settings import Settings

log = logging.getLogger(__name__)
SCHEME = "twinstream"
FETCH_MAX_WAIT_MS = 100


@dataclass(frozen=True)
class FetchedBatch:
    """The records of diverted topics from one fetch, by partition, and the consumer generation
    they were fetched in."""

    generation: int
    records: dict[TP, list[Any]]  # aiokafka ConsumerRecords, in offset order


class Diverted:
    """Topics whose records go to :attr:`batches` instead of Faust's streams (set as
    ``app.diverted`` before the worker starts). At most ``depth`` batches wait: a full queue
    holds the fetch loop back, as Faust's own full stream buffers do."""

    def __init__(self, topics: set[str], depth: int = 2) -> None:
        self.topics = frozenset(topics)
        self.batches: asyncio.Queue[FetchedBatch] = asyncio.Queue(depth)


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        if not hasattr(consumer, "_fetch_max_wait_ms"):  # read by AIOKafkaConsumer.start()
            raise RuntimeError(f"aiokafka {aiokafka.__version__} has no _fetch_max_wait_ms")
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        if not hasattr(consumer, "_partition_assignment_strategy"):  # read by start() too
            raise RuntimeError(f"aiokafka {aiokafka.__version__} has no assignment strategy")
        self._assignor = self.app.assignor  # where Faust's driver keeps the one it chose
        consumer._partition_assignment_strategy = [self._assignor]
        return consumer


class Consumer(faust_aiokafka.Consumer):
    commits_refused: str | None = None  # why, once refused

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batch_acked: dict[TP, int] = {}  # diverted partitions: the offset to commit

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        """Faust's fetch, less the records of diverted topics: those go to ``app.diverted``."""
        records, active = await super()._wait_next_records(timeout)
        diverted: Diverted | None = getattr(self.app, "diverted", None)
        if not records or diverted is None:
            return records, active
        records = dict(records)  # Faust's fetch, less what this takes out
        mine = {tp: records.pop(tp) for tp in list(records) if tp.topic in diverted.topics}
        fetching = {
            tp: batch
            for tp, batch in mine.items()
            if batch and (active is None or tp in active or tp in self._buffered_partitions)
        }
        if fetching and not self.should_stop:
            generation = self.app.consumer_generation_id
            await diverted.batches.put(FetchedBatch(generation, fetching))
        return records, active

    def ack_batch(self, tp: TP, last_offset: int, count: int) -> None:
        """The records of ``tp`` up to ``last_offset`` are applied: commit after it."""
        self._batch_acked[tp] = last_offset + 1
        self._acked.setdefault(tp, [])  # Faust commits the partitions listed there
        self._n_acked += count

    def _new_offset(self, tp: TP) -> int | None:
        if tp in self._batch_acked:
            return self._batch_acked[tp]
        return super()._new_offset(tp)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        for tp in revoked:
            self._batch_acked.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    def refuse_commits(self, reason: str) -> None:
        """From now on commit no offset of any partition (for the life of this process)."""
        self.commits_refused = reason

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        """Every commit of Faust's ends here: refused once :meth:`refuse_commits` was called."""
        if self.commits_refused is not None:
            log.warning("offsets not committed (%s): %s", self.commits_refused, dict(offsets))
            return False
        return bool(await super()._commit(offsets))


class Producer(faust_aiokafka.Producer):
    def _settings_extra(self) -> Mapping[str, Any]:
        compression = Settings.from_env().worker_compression  # samples, changelog, ...
        return {
            "enable_idempotence": True,  # needs acks=all
            "compression_type": None if compression == "none" else compression,
            **super()._settings_extra(),
        }


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer
    Producer = Producer


drivers.TRANSPORTS.aliases.setdefault(SCHEME, f"{__name__}:Transport")
