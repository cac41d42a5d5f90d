"""The ``score`` agent over ``score-requests``: each request is answered from this worker's
state (it owns the request's partition, the same number as the user's ``events`` partition) and
the answer sent to ``scores`` on that partition, with the request's key."""

from __future__ import annotations

from typing import Any

import faust
import orjson

from contracts.settings import Settings
from streaming.scoring import ScoringService
from streaming.sink import Sink


def requests_topic(app: faust.App, settings: Settings) -> faust.TopicT:
    """``score-requests``, co-partitioned with ``events``."""
    return app.topic(
        settings.topics.score_requests,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.topics.events_partitions,
    )


def add_score_agent(
    app: faust.App, requests: faust.TopicT, settings: Settings, service: ScoringService, sink: Sink
) -> None:
    @app.agent(requests, name="score")
    async def score(stream: Any) -> None:
        async for event in stream.events():
            partition = event.message.partition
            answer = service.answer(event.message.value, partition, "kafka")
            await sink.send(
                settings.topics.scores, event.message.key, orjson.dumps(answer), partition
            )
