"""Score requests: their schema, their limits and their error answers (scoring: serving.scorer).

A request (topic ``score-requests``, key = user id, or ``POST /score``)::

    {"request_id": "r1", "user_id": "42", "items": ["1001", "1002"],
     "categories": ["7", "7"], "explain": true, "top": 10}

``categories`` is optional (the worker remembers each item's category from the events it has
seen; unknown → "0"). The answer carries one score per candidate, the snapshot version, and with
``explain`` the most attended past behaviours and their weights. Problems are answered, never
raised: ``{"request_id": ..., "error": {"code": ..., "detail": ...}}``.

>>> req = parse_request(b'{"request_id": "r", "user_id": 1, "items": [5, "6"]}')
>>> req.user_id, req.items, req.explain
('1', ('5', '6'), False)
>>> try:
...     parse_request(b'{"request_id": "r", "user_id": 1, "items": []}')
... except BadRequest as err:
...     print(err.code)
no_candidates
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

MAX_CANDIDATES = 1_000
MAX_REQUEST_BYTES = 256 * 1024
MAX_EXPLAIN = 50

NOT_SERVED = "not_served"  # the user's partition is not held by that worker now: ask again


class BadRequest(ValueError):
    """A request that cannot be scored; ``code`` is a closed set, safe as a metric label."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code, self.detail = code, detail


@dataclass(frozen=True)
class ScoreRequest:
    request_id: str
    user_id: str
    items: tuple[str, ...]
    categories: tuple[str, ...] | None = None
    explain: bool = False
    top: int = 10
    sent_at: float | None = None

    def to_json(self) -> bytes:
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "user_id": self.user_id,
            "items": list(self.items),
            "explain": self.explain,
            "top": self.top,
        }
        if self.categories is not None:
            out["categories"] = list(self.categories)
        if self.sent_at is not None:
            out["sent_at"] = self.sent_at
        return orjson.dumps(out)


def new_request_id() -> str:
    return uuid.uuid4().hex


def parse_request(raw: bytes) -> ScoreRequest:
    if len(raw) > MAX_REQUEST_BYTES:
        raise BadRequest("too_large", f"{len(raw)} bytes > {MAX_REQUEST_BYTES}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise BadRequest("bad_json", str(err)) from None
    if not isinstance(obj, dict):
        raise BadRequest("not_object", "a request is a JSON object")
    items = _ids(obj.get("items"), "items")
    categories = None if obj.get("categories") is None else _ids(obj["categories"], "categories")
    if categories is not None and len(categories) != len(items):
        raise BadRequest("wrong_type", "categories must have one entry per item")
    return ScoreRequest(
        request_id=_text(obj.get("request_id") or new_request_id(), "request_id"),
        user_id=_text(obj.get("user_id"), "user_id"),
        items=items,
        categories=categories,
        explain=_flag(obj.get("explain", False)),
        top=_top(obj.get("top", 10)),
        sent_at=_number(obj.get("sent_at")),
    )


def request_id_of(raw: bytes) -> str | None:
    """Best effort: the request id of a request that failed to parse (to answer it)."""
    try:
        obj = orjson.loads(raw[:MAX_REQUEST_BYTES])
    except orjson.JSONDecodeError:
        return None
    rid = obj.get("request_id") if isinstance(obj, dict) else None
    return rid if isinstance(rid, str) and len(rid) <= 128 else None


def _text(value: object, name: str) -> str:
    if value is None:
        raise BadRequest("missing_field", f"{name} is required")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRequest("wrong_type", f"{name} must be a string or an integer")
    text = str(value)
    if not text or len(text) > 128:
        raise BadRequest("wrong_type", f"{name} must have 1..128 characters")
    return text


def _ids(value: object, name: str) -> tuple[str, ...]:
    if value is None:
        raise BadRequest("missing_field", f"{name} is required")
    if not isinstance(value, list):
        raise BadRequest("wrong_type", f"{name} must be a list")
    if not value:
        raise BadRequest("no_candidates", f"{name} is empty")
    if len(value) > MAX_CANDIDATES:
        raise BadRequest("too_many_candidates", f"{len(value)} > {MAX_CANDIDATES}")
    return tuple(_text(v, name) for v in value)


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise BadRequest("wrong_type", "explain must be true or false")
    return value


def _top(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_EXPLAIN:
        raise BadRequest("wrong_type", f"top must be an integer in 1..{MAX_EXPLAIN}")
    return value


def _number(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest("wrong_type", "sent_at must be a finite number")
    return float(value)


def error_response(request_id: str | None, code: str, detail: str) -> dict[str, Any]:
    return {"request_id": request_id, "error": {"code": code, "detail": detail}}
