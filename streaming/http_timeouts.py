"""Timeouts for idle and slow clients of the worker's HTTP server (aiohttp, under Faust's web).

Every open connection holds a file descriptor, and aiohttp as Faust starts it kept one that sent
nothing, or half a request, for an hour. Two settings bound them:

* ``Settings.http_idle_timeout_s`` (aiohttp's ``keepalive_timeout``): a connection on which no
  whole request head (request line and headers) has arrived within this time of being opened, or
  of its last response, is closed. That covers idle keep-alive connections and half-sent heads
  alike: aiohttp sees a request only once its head is complete.
* ``Settings.http_body_timeout_s``: a request whose body has not arrived whole within this time
  of its head is answered 408 and its connection closed (:func:`body_deadline`, a middleware
  that reads the body before the view, which then reads it from memory).

:func:`web_options` is what :func:`streaming.app.create_app` hands Faust as
``web_application_options`` (keyword arguments of aiohttp's ``Application``).

>>> from contracts.settings import Settings
>>> web_options(Settings())["handler_args"]
{'keepalive_timeout': 15.0}
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from contracts.settings import Settings
from serving.requests import MAX_REQUEST_BYTES, error_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def web_options(settings: Settings) -> dict[str, Any]:
    """aiohttp ``Application`` keyword arguments: the idle timeout and the body deadline."""
    return {
        "handler_args": {"keepalive_timeout": settings.http_idle_timeout_s},
        "middlewares": [body_deadline(settings.http_body_timeout_s)],
    }


def body_deadline(timeout_s: float) -> Middleware:
    """A middleware that reads each request's body within ``timeout_s`` of its head, else
    answers 408 and closes the connection. A body declared larger than ``MAX_REQUEST_BYTES`` is
    left unread for the view to refuse (413)."""

    @web.middleware
    async def read_body_in_time(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.can_read_body and (request.content_length or 0) <= MAX_REQUEST_BYTES:
            try:
                await asyncio.wait_for(request.read(), timeout_s)
            except TimeoutError:
                return await _timed_out(request, timeout_s)
        return await handler(request)

    return read_body_in_time


async def _timed_out(request: web.Request, timeout_s: float) -> web.StreamResponse:
    """Send 408, then close the connection at once (aiohttp would otherwise linger up to 10 s
    reading the rest of the body)."""
    detail = f"request body not received within {timeout_s:g} s"
    response = web.json_response(error_response(None, "timeout", detail), status=408)
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    if request.protocol is not None:
        request.protocol.force_close()
    return response
