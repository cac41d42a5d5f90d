"""A worker's HTTP port read as a client reads it: ``POST /score`` and ``GET /healthz`` on
127.0.0.1, the JSON answer whatever its status (an error answer names its code)."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import orjson


def http_json(port: int, path: str, body: bytes | None = None) -> tuple[int, dict[str, Any]]:
    """The status and JSON answer of ``GET path`` on the worker at ``port``, or of ``POST path``
    with ``body``."""
    url = f"http://127.0.0.1:{port}{path}"
    req = urllib.request.Request(url, data=body, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(orjson.loads(resp.read()))
    except urllib.error.HTTPError as err:
        return err.code, dict(orjson.loads(err.read()))


def post_score(
    port: int, user: str, items: list[str], request_id: str | None = None
) -> dict[str, Any]:
    """The answer to a score request for ``user`` and candidate ``items``."""
    request: dict[str, Any] = {"user_id": user, "items": items}
    if request_id is not None:
        request["request_id"] = request_id
    return http_json(port, "/score", orjson.dumps(request))[1]


def healthz(port: int) -> dict[str, Any]:
    """What the worker at ``port`` says of its health: partitions, model version, fault."""
    return http_json(port, "/healthz")[1]
