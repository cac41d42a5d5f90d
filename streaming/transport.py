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

Its producer is idempotent. When a broker dies, a record batch it had already copied to its
followers may never be acknowledged; the producer sends it again to the new leader, which without
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

Its consumer commits no offset once told to refuse (:meth:`Consumer.refuse_commits`): a worker
that could not write a batch's state stops (:mod:`streaming.failstop`), and every commit Faust
would still make on its way out (the periodic one, the one on stop, the one on a rebalance) is
refused, so the group resumes before that batch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import aiokafka
from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

log = logging.getLogger(__name__)
SCHEME = "twinstream"
FETCH_MAX_WAIT_MS = 100


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
        return {"enable_idempotence": True, **super()._settings_extra()}  # needs acks=all


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer
    Producer = Producer


drivers.TRANSPORTS.aliases.setdefault(SCHEME, f"{__name__}:Transport")
