"""The worker's web server (create_app's aiohttp application, on a test server) closes clients
that hold a connection without finishing a request: idle ones and half-sent heads after the idle
timeout, half-sent bodies after the body timeout (with a 408); whole requests are answered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import faust
import faust.web
import pytest
from aiohttp.test_utils import TestServer

from contracts.settings import Settings
from streaming.app import create_app

IDLE_S, BODY_S = 0.6, 0.3
SETTINGS = Settings(http_idle_timeout_s=IDLE_S, http_body_timeout_s=BODY_S)
SLACK_S = 1.0  # the event loop's and the test's own delays


@pytest.fixture()
async def server() -> AsyncIterator[TestServer]:
    app = create_app(SETTINGS, http_port=28_997)

    @app.page("/echo")
    class Echo(faust.web.View):
        async def post(self, request: Any) -> Any:
            return self.bytes(await request.read())

    async with TestServer(app.web.web_app) as test_server:  # type: ignore[attr-defined]
        yield test_server


async def closed_after(server: TestServer, sent: bytes) -> tuple[bytes, float]:
    """Connect, send ``sent``, then read: everything the server sent until it closed the
    connection, and how long after sending that was."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(sent)
    await writer.drain()
    since = time.monotonic()
    received = await asyncio.wait_for(reader.read(), timeout=IDLE_S + BODY_S + 5 * SLACK_S)
    elapsed = time.monotonic() - since
    writer.close()
    return received, elapsed


@pytest.mark.parametrize(
    "sent",
    [b"", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Le"],
    ids=["idle", "half-sent head"],
)
async def test_a_connection_without_a_whole_head_is_closed_after_the_idle_timeout(
    server: TestServer, sent: bytes
) -> None:
    received, elapsed = await closed_after(server, sent)
    assert received == b"" and IDLE_S - 0.1 <= elapsed <= IDLE_S + SLACK_S


async def test_a_half_sent_body_gets_408_and_is_closed_after_the_body_timeout(
    server: TestServer,
) -> None:
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    received, elapsed = await closed_after(server, head + b"only ten b")
    assert received.startswith(b"HTTP/1.1 408 ") and b'"code": "timeout"' in received
    assert BODY_S - 0.1 <= elapsed <= BODY_S + SLACK_S


async def test_a_whole_request_is_answered_and_its_connection_then_idles_out(
    server: TestServer,
) -> None:
    request = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    received, elapsed = await closed_after(server, request)
    assert received.startswith(b"HTTP/1.1 200 ") and received.endswith(b"\r\n\r\nhello")
    assert IDLE_S - 0.1 <= elapsed <= IDLE_S + SLACK_S  # kept alive, then closed when idle


def test_the_timeouts_come_from_the_environment_with_defaults() -> None:
    defaults = Settings.from_env({})
    assert (defaults.http_idle_timeout_s, defaults.http_body_timeout_s) == (15.0, 10.0)
    env = {"TWINSTREAM_HTTP_IDLE_TIMEOUT_S": "30", "TWINSTREAM_HTTP_BODY_TIMEOUT_S": "2.5"}
    told = Settings.from_env(env)
    assert (told.http_idle_timeout_s, told.http_body_timeout_s) == (30.0, 2.5)
    with pytest.raises(ValueError, match="must be positive"):
        Settings(http_body_timeout_s=0)
