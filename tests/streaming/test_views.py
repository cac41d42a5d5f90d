"""The worker's HTTP views on an aiohttp test server (no broker): /score answers locally when
this worker owns the user or the owner is unknown, else forwards once with the header; bodies
over the limit get 413; /healthz names the owned partitions and the model version."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import faust
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from faust.types import TP
from prometheus_client import CollectorRegistry

from contracts.settings import Settings
from serving.requests import MAX_REQUEST_BYTES
from streaming.agents.score import requests_topic
from streaming.app import create_app
from streaming.failstop import FailStop
from streaming.metrics import IngestMetrics
from streaming.views import FORWARDED, add_views

SETTINGS = Settings()
REQUEST = orjson.dumps({"user_id": "u1", "items": ["1"]})
OWNED = SimpleNamespace(workers={3: None, 1: None})  # the owned partitions' part /healthz reads


class Answers:
    """The scoring service's part the views use: answer() and the model holder."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes | None, int | None, str]] = []
        self.holder = type("Holder", (), {"model": None})()

    def answer(self, raw: bytes | None, partition: int | None, transport: str) -> dict[str, Any]:
        self.calls.append((raw, partition, transport))
        return {"error": {"code": "bad_json"}} if raw == b"{" else {"scores": [0.5]}


@pytest.fixture()
async def worker(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[faust.App, Answers]]:
    app = create_app(SETTINGS, http_port=28_999)
    answers = Answers()
    fail_stop = FailStop(app, IngestMetrics.create(CollectorRegistry()))
    add_views(app, requests_topic(app, SETTINGS), answers, OWNED, fail_stop)  # type: ignore[arg-type]
    monkeypatch.setattr(app.producer, "key_partition", lambda topic, key: TP(topic, 3))
    yield app, answers
    await app.http_client.close()


def owner_is(app: faust.App, monkeypatch: pytest.MonkeyPatch, url: object) -> None:
    monkeypatch.setattr(app.router, "external_topic_key_store", lambda topic, key: url)


async def test_the_owner_answers_locally(
    worker: tuple[faust.App, Answers], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, answers = worker
    async with TestClient(TestServer(app.web.web_app)) as client:
        unknown = await client.post("/score", data=REQUEST)  # no assignment yet: no owner
        owner_is(app, monkeypatch, app.conf.canonical_url)
        mine = await client.post("/score", data=REQUEST)
        bad = await client.post("/score", data=b"{")
        assert (unknown.status, mine.status, bad.status) == (200, 200, 400)
        assert await mine.json() == {"scores": [0.5]}
    assert answers.calls == [(REQUEST, 3, "http"), (REQUEST, 3, "http"), (b"{", None, "http")]


async def test_a_request_over_the_limit_is_refused_unread(
    worker: tuple[faust.App, Answers],
) -> None:
    app, answers = worker
    async with TestClient(TestServer(app.web.web_app)) as client:
        response = await client.post("/score", data=b" " * (MAX_REQUEST_BYTES + 1))
        assert response.status == 413
        assert (await response.json())["error"]["code"] == "too_large"
    assert answers.calls == []


async def test_another_owner_gets_the_request_forwarded_once(
    worker: tuple[faust.App, Answers], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, answers = worker
    seen: list[tuple[str, str | None, bytes]] = []

    async def owner_score(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get(FORWARDED), await request.read()))
        return web.json_response({"answered_by": "owner"}, status=400)

    owner = web.Application()
    owner.router.add_post("/score", owner_score)
    async with TestServer(owner) as owner_server, TestClient(TestServer(app.web.web_app)) as client:
        owner_is(app, monkeypatch, str(owner_server.make_url("/")))
        forwarded = await client.post("/score", data=REQUEST)
        assert forwarded.status == 400 and await forwarded.json() == {"answered_by": "owner"}
        assert forwarded.content_type == "application/json"
        again = await client.post("/score", data=REQUEST, headers={FORWARDED: "1"})
        assert again.status == 200  # already forwarded: answered here, never a second hop
    assert seen == [("/score", "1", REQUEST)]
    assert answers.calls == [(REQUEST, 3, "http")]


async def test_healthz_names_partitions_and_model_version(
    worker: tuple[faust.App, Answers],
) -> None:
    app, answers = worker
    async with TestClient(TestServer(app.web.web_app)) as client:
        before = await (await client.get("/healthz")).json()
        answers.holder.model = type("Model", (), {"version": 7})()
        after = await (await client.get("/healthz")).json()
    assert before == {"partitions": [1, 3], "model_version": None}
    assert after == {"partitions": [1, 3], "model_version": 7}
