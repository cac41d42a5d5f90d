"""The worker's sampled gauges: consumer lag of both agents on the owned partitions, and the
users and bytes of the local state (ARCHITECTURE.md section 8).

Sampled on a timer of their own (a broker away can make a sample wait its request timeout);
monitoring failures are logged, never raised.
"""

from __future__ import annotations

import asyncio
import logging
import time

from contracts.metrics import GroupLag, set_lag
from contracts.settings import Settings
from streaming.app import APP_NAME
from streaming.metrics import IngestMetrics, count_users, folder_bytes
from streaming.partitions import OwnedPartitions

log = logging.getLogger(__name__)
STATE_SIZE_EVERY_S = 30.0  # counting users reads every key: not on every tick


class WorkerGauges:
    def __init__(
        self, settings: Settings, partitions: OwnedPartitions, metrics: IngestMetrics
    ) -> None:
        self.settings, self.partitions, self.metrics = settings, partitions, metrics
        self.lag = GroupLag(settings.kafka_config(), f"{settings.topics.prefix}{APP_NAME}")
        self._state_sampled = -STATE_SIZE_EVERY_S  # monotonic time of the last users count

    async def sample(self) -> None:
        """Consumer lag now; users and bytes of the state every ``STATE_SIZE_EVERY_S``."""
        topics = {
            "ingest": self.settings.topics.events,
            "score": self.settings.topics.score_requests,
        }
        owned = sorted(self.partitions.active())
        try:
            set_lag(
                self.metrics.consumer_lag, await asyncio.to_thread(self.lag.sample, topics, owned)
            )
        except Exception as err:  # kafka-python raises many types; lag is best effort
            log.warning("consumer lag not sampled: %r", err)
        if time.monotonic() - self._state_sampled < STATE_SIZE_EVERY_S:
            return
        self._state_sampled = time.monotonic()
        async with self.partitions.lock:  # own() must not close a store while it is counted
            stores = [w.store for w in self.partitions.workers.values()]
            self.metrics.users.set(await asyncio.to_thread(count_users, stores))
        state_dir = self.partitions.state_dir
        self.metrics.state_bytes.set(await asyncio.to_thread(folder_bytes, state_dir))

    def close(self) -> None:
        self.lag.close()
