"""The worker's Faust transport: the aiokafka consumer it builds has the short fetch wait."""

from __future__ import annotations

import asyncio

from contracts.settings import Settings
from streaming.app import create_app
from streaming.transport import FETCH_MAX_WAIT_MS, ConsumerThread, Transport


def test_the_app_consumes_through_the_short_wait_transport() -> None:
    async def build() -> int:
        app = create_app(Settings.from_env({}))
        assert isinstance(app.transport, Transport)
        thread = app.consumer._new_consumer_thread()
        assert isinstance(thread, ConsumerThread)
        consumer = thread._create_worker_consumer(app.transport)
        return int(consumer._fetch_max_wait_ms)

    assert asyncio.run(build()) == FETCH_MAX_WAIT_MS < 1_500  # Faust's own value is 1,500 ms
