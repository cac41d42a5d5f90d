"""The worker's HTTP views: ``POST /score`` and ``GET /healthz``.

``/score`` is answered here when this worker owns the user's partition (or the owner is unknown,
or the request was already forwarded once), else forwarded to the owner's canonical URL with the
``X-Twinstream-Forwarded`` header; bodies over ``MAX_REQUEST_BYTES`` are refused with 413. The
owner of each partition of ``score-requests`` (and so of ``events``, co-partitioned with it) is
known from the last rebalance: Faust's partition assignor tells every worker (``app.router``;
:mod:`streaming.transport`).
``/healthz`` names the owned partitions and the serving model version; once the worker has
fail-stopped (:mod:`streaming.failstop`) it answers 503 with the fault's kind and detail.
"""

from __future__ import annotations

from typing import Any

import faust
import faust.web
import orjson

from serving.requests import MAX_REQUEST_BYTES, error_response
from streaming.failstop import FailStop
from streaming.partitions import OwnedPartitions
from streaming.scoring import ScoringService

FORWARDED = "X-Twinstream-Forwarded"


def add_views(
    app: faust.App,
    requests: faust.TopicT,
    service: ScoringService,
    partitions: OwnedPartitions,
    fail_stop: FailStop,
) -> None:
    @app.page("/score")
    class ScoreView(faust.web.View):
        async def post(self, request: Any) -> Any:
            if (request.content_length or 0) > MAX_REQUEST_BYTES:
                return self.json(error_response(None, "too_large", "request too large"), status=413)
            body = await request.read()
            owner = _owner(app, requests, body)
            if owner is None or owner == app.conf.canonical_url or FORWARDED in request.headers:
                answer = service.answer(body, _partition(app, requests, body), "http")
                return self.json(answer, status=400 if "error" in answer else 200)
            return await _forward(app, owner, body)

    @app.page("/healthz")
    class Health(faust.web.View):
        async def get(self, request: Any) -> Any:
            model = service.holder.model
            health = {
                "partitions": sorted(partitions.workers),
                "model_version": None if model is None else model.version,
            }
            fault = fail_stop.fault
            if fault is None:
                return self.json(health)
            fault_json = {"kind": fault.kind, "detail": fault.detail}
            return self.json(health | {"fault": fault_json}, status=503)


def user_key(body: bytes) -> bytes | None:
    """The request's user id as the Kafka key it is partitioned by; None when there is none.

    >>> user_key(b'{"user_id": 7}'), user_key(b'{"user_id": true}'), user_key(b"[1]")
    (b'7', None, None)
    """
    try:
        user = orjson.loads(body).get("user_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return (
        str(user).encode() if isinstance(user, str | int) and not isinstance(user, bool) else None
    )


def _partition(app: faust.App, requests: faust.TopicT, body: bytes) -> int | None:
    key = user_key(body)
    if key is None:
        return None
    return int(app.producer.key_partition(requests.get_topic_name(), key).partition)


def _owner(app: faust.App, requests: faust.TopicT, body: bytes) -> Any:
    key = user_key(body)
    if key is None:
        return None
    try:
        return app.router.external_topic_key_store(requests, key)
    except KeyError:
        return None


async def _forward(app: faust.App, owner: Any, body: bytes) -> Any:
    url = f"{owner}".rstrip("/") + "/score"
    async with app.http_client.post(url, data=body, headers={FORWARDED: "1"}) as response:
        from aiohttp import web

        return web.Response(
            body=await response.read(), status=response.status, content_type="application/json"
        )
