"""The ``score`` agent over ``score-requests``: each request is answered from the state of its
body's user and the answer sent to ``scores`` on the request's partition, with the request's key.

The user's state lives on the partition that owns the user (:mod:`streaming.routing`), the same
number in ``events`` and ``score-requests``. A request that arrives elsewhere (a producer with
another partitioner or key) is answered from the owner's state when this worker holds it, else
sent on to the owner's partition of ``score-requests``, whose worker answers it: once either way.

Answers are best effort: the request is acknowledged once its answer is queued, not delivered (an
answer waited for one by one would hold each request up by a broker round trip), and an answer the
broker refuses is logged, not retried; a client that got none asks again. The worker gives the
agent a sink of its own (:class:`streaming.sink.BestEffortSink`), so answers never hold up, nor
fail, the ingest service's flushes. A request sent on to its owner is acknowledged only once the
broker has the copy.
"""

from __future__ import annotations

from typing import Any

import faust
import orjson

from contracts.settings import Settings
from streaming.routing import Copy, Router, request_user
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
    app: faust.App,
    requests: faust.TopicT,
    settings: Settings,
    service: ScoringService,
    sink: Sink,
    router: Router | None = None,
) -> None:
    """``router``: finds the owner of each request's user (the worker has one); without one
    every request is answered from the partition it arrived on."""
    topic = requests.get_topic_name()

    @app.agent(requests, name="score")
    async def score(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            here, user = message.partition, request_user(message.value)
            owner = here if router is None or user is None else router.owner(user)
            if router is not None and user is not None and not answerable(owner, here, service):
                copy = Copy(owner, user.encode(), message.value, message.timestamp)
                await (await router.send(topic, [copy])).acknowledged()  # then the source is acked
                continue
            answer = orjson.dumps(service.answer(message.value, owner, "kafka"))
            await sink.send(settings.topics.scores, message.key, answer, here)


def answerable(owner: int, here: int, service: ScoringService) -> bool:
    """Whether this worker answers a request that arrived on partition ``here``: the owner's
    partition is that one, or another one this worker holds."""
    return owner == here or owner in service.partitions.workers
