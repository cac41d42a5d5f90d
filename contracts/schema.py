"""The event schema of topic ``events`` (ARCHITECTURE.md section 2) and its validator.

Every rejection carries a :class:`Reason` (a small closed set, safe as a metric label) and a
human-readable detail.

>>> e = parse_event(b'{"user_id": 7, "item_id": "i1", "type": "pv", "ts": 1511658000}')
>>> (e.user_id, e.item_id, e.category_id, e.type.value, e.ts)
('7', 'i1', '0', 'click', 1511658000.0)
>>> try:
...     parse_event(b'{"user_id": "", "item_id": 1, "type": "click", "ts": 1511658000}')
... except InvalidEvent as err:
...     print(err.reason.value, "-", err.detail)
bad_value - user_id must be non-empty
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson

MAX_EVENT_BYTES = 64 * 1024
MAX_USER_ID_CHARS = 128
MAX_ID_CHARS = 256
MIN_TS = 946_684_800.0  # 2000-01-01T00:00:00Z
MAX_FUTURE_S = 86_400.0
UNKNOWN_CATEGORY = "0"


class EventType(StrEnum):
    IMPRESSION = "impression"
    CLICK = "click"
    CART = "cart"
    FAV = "fav"
    BUY = "buy"


TYPE_ALIASES: dict[str, EventType] = {t.value: t for t in EventType} | {"pv": EventType.CLICK}


class Reason(StrEnum):
    """Why an event was rejected. Closed set: used as a Prometheus label and in the DLQ."""

    OVERSIZE = "oversize"
    NOT_UTF8 = "not_utf8"
    BAD_JSON = "bad_json"
    NOT_OBJECT = "not_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    BAD_VALUE = "bad_value"
    UNKNOWN_TYPE = "unknown_type"
    BAD_TIMESTAMP = "bad_timestamp"
    LATE = "late"


class InvalidEvent(ValueError):
    """An event that breaks the schema; ``reason`` is one of :class:`Reason`."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


Feature = float | str


@dataclass(frozen=True, slots=True)
class Event:
    """One validated user behaviour. Ids are normalised to strings."""

    user_id: str
    item_id: str
    type: EventType
    ts: float
    category_id: str = UNKNOWN_CATEGORY
    event_id: str | None = None
    request_id: str | None = None
    features: Mapping[str, Feature] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "user_id": self.user_id,
            "item_id": self.item_id,
            "category_id": self.category_id,
            "type": self.type.value,
            "ts": self.ts,
        }
        if self.event_id is not None:
            out["event_id"] = self.event_id
        if self.request_id is not None:
            out["request_id"] = self.request_id
        if self.features:
            out["features"] = dict(self.features)
        return out

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @property
    def key(self) -> bytes:
        """The Kafka message key: the user id, so a user's events share a partition."""
        return self.user_id.encode()


def parse_event(
    raw: bytes | str,
    *,
    now: float | None = None,
    max_bytes: int = MAX_EVENT_BYTES,
    min_ts: float = MIN_TS,
) -> Event:
    """Decode and validate one message; raise :class:`InvalidEvent` with a reason."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if len(raw) > max_bytes:
        raise InvalidEvent(Reason.OVERSIZE, f"{len(raw)} bytes > {max_bytes}")
    try:
        obj = orjson.loads(raw)  # rejects invalid UTF-8 too: tell the two apart only then
    except orjson.JSONDecodeError as err:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as utf8:
            raise InvalidEvent(Reason.NOT_UTF8, str(utf8)) from None
        raise InvalidEvent(Reason.BAD_JSON, str(err)) from None
    return validate_record(obj, now=now, min_ts=min_ts)


def parse_plain_event(raw: bytes, max_bytes: int, min_ts: float, limit: float) -> Event | None:
    """The event of a message in the usual shape, or None: then :func:`parse_event` decides.

    The usual shape: a JSON object whose ids (user, item, category; event and request id if
    present) are non-empty strings within their lengths, a known lower-case type, a numeric ``ts``
    in ``[min_ts, limit]`` and no features. Such a message is what :func:`parse_event` accepts,
    and the event is the one it makes; a batch of them skips the general validator's per-field
    calls (the ingest agent's path). ``limit``: the latest ``ts`` accepted, at most ``now + 1 day``
    of :func:`parse_event` (a batch computes it once, before its events).
    """
    if len(raw) > max_bytes:
        return None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict or obj.get("features") is not None:
        return None
    user, item, ts = obj.get("user_id", ""), obj.get("item_id", ""), obj.get("ts")
    category = obj.get("category_id", UNKNOWN_CATEGORY)
    kind, event_id, request_id = obj.get("type"), obj.get("event_id"), obj.get("request_id")
    if type(ts) is int and min_ts <= ts <= limit:
        ts = float(ts)
    event_type = TYPE_ALIASES.get(kind) if type(kind) is str else None
    if (
        event_type is None
        or type(ts) is not float
        or not min_ts <= ts <= limit  # NaN and infinities fail it too
        or not _plain_id(user, MAX_USER_ID_CHARS)
        or not _plain_id(item, MAX_ID_CHARS)
        or not _plain_id(category, MAX_ID_CHARS)
        or not (event_id is None or _plain_id(event_id, MAX_ID_CHARS))
        or not (request_id is None or _plain_id(request_id, MAX_ID_CHARS))
    ):
        return None
    return _checked_event(user, item, event_type, ts, category, event_id, request_id)


def _plain_id(value: object, max_chars: int) -> bool:
    return type(value) is str and 0 < len(value) <= max_chars


_new_object = object.__new__
_set_user_id = Event.__dict__["user_id"].__set__  # the slots' own setters: no frozen check
_set_item_id = Event.__dict__["item_id"].__set__
_set_type = Event.__dict__["type"].__set__
_set_ts = Event.__dict__["ts"].__set__
_set_category_id = Event.__dict__["category_id"].__set__
_set_event_id = Event.__dict__["event_id"].__set__
_set_request_id = Event.__dict__["request_id"].__set__
_set_features = Event.__dict__["features"].__set__
_CHECKED_EVENT_SETS = ("user_id", "item_id", "type", "ts", "category_id", "event_id", "request_id")
if [f.name for f in fields(Event)] != [*_CHECKED_EVENT_SETS, "features"]:  # at import, loudly
    raise TypeError("Event's fields changed: _checked_event must set every one of them")


def _checked_event(
    user_id: str,
    item_id: str,
    event_type: EventType,
    ts: float,
    category_id: str,
    event_id: str | None,
    request_id: str | None,
) -> Event:
    """``Event(...)`` without features, its fields set through the slots (half the cost of the
    frozen dataclass's ``__init__``): for values already checked."""
    event: Event = _new_object(Event)
    _set_user_id(event, user_id)
    _set_item_id(event, item_id)
    _set_type(event, event_type)
    _set_ts(event, ts)
    _set_category_id(event, category_id)
    _set_event_id(event, event_id)
    _set_request_id(event, request_id)
    _set_features(event, {})
    return event


def validate_record(obj: object, *, now: float | None = None, min_ts: float = MIN_TS) -> Event:
    """Validate an already-decoded record (a dict) and build the :class:`Event`."""
    if not isinstance(obj, dict):
        raise InvalidEvent(Reason.NOT_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
    for name in ("user_id", "item_id", "type", "ts"):
        if name not in obj or obj[name] is None:
            raise InvalidEvent(Reason.MISSING_FIELD, f"{name} is required")
    user_id = _id(obj["user_id"], "user_id", MAX_USER_ID_CHARS)
    item_id = _id(obj["item_id"], "item_id", MAX_ID_CHARS)
    category = obj.get("category_id")
    category_id = (
        UNKNOWN_CATEGORY if category is None else _id(category, "category_id", MAX_ID_CHARS)
    )
    return Event(
        user_id=user_id,
        item_id=item_id,
        category_id=category_id,
        type=_event_type(obj["type"]),
        ts=parse_timestamp(obj["ts"], now=now, min_ts=min_ts),
        event_id=_optional_str(obj.get("event_id"), "event_id"),
        request_id=_optional_str(obj.get("request_id"), "request_id"),
        features=_features(obj.get("features")),
    )


def _id(value: object, name: str, max_chars: int) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidEvent(Reason.WRONG_TYPE, f"{name} must be a string or an integer")
    text = str(value)
    if not text:
        raise InvalidEvent(Reason.BAD_VALUE, f"{name} must be non-empty")
    if len(text) > max_chars:
        raise InvalidEvent(Reason.BAD_VALUE, f"{name} longer than {max_chars} chars")
    return text


def _event_type(value: object) -> EventType:
    if not isinstance(value, str):
        raise InvalidEvent(Reason.WRONG_TYPE, "type must be a string")
    try:
        return TYPE_ALIASES[value.lower()]
    except KeyError:
        raise InvalidEvent(Reason.UNKNOWN_TYPE, f"unknown event type {value[:32]!r}") from None


def parse_timestamp(value: object, *, now: float | None = None, min_ts: float = MIN_TS) -> float:
    """Unix seconds (int/float/numeric string) or ISO-8601; within [min_ts, now + 1 day].

    ``min_ts`` defaults to 2000-01-01; historical logs (MovieLens starts in 1996) may lower it.
    """
    if isinstance(value, bool):
        raise InvalidEvent(Reason.WRONG_TYPE, "ts must be a number or an ISO-8601 string")
    if isinstance(value, int | float):
        ts = float(value)
    elif isinstance(value, str):
        ts = _parse_ts_string(value)
    else:
        raise InvalidEvent(Reason.WRONG_TYPE, "ts must be a number or an ISO-8601 string")
    if not math.isfinite(ts):
        raise InvalidEvent(Reason.BAD_TIMESTAMP, f"ts is not finite: {ts}")
    limit = (time.time() if now is None else now) + MAX_FUTURE_S
    if ts < min_ts or ts > limit:
        raise InvalidEvent(Reason.BAD_TIMESTAMP, f"ts {ts} outside [{min_ts:.0f}, now + 1 day]")
    return ts


def _parse_ts_string(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidEvent(Reason.BAD_TIMESTAMP, f"unparseable ts {text[:40]!r}") from None
    if parsed.tzinfo is None:
        raise InvalidEvent(Reason.BAD_TIMESTAMP, "ISO-8601 ts needs a timezone")
    return parsed.timestamp()


def _optional_str(value: object, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidEvent(Reason.WRONG_TYPE, f"{name} must be a string")
    text = str(value)
    if len(text) > MAX_ID_CHARS:
        raise InvalidEvent(Reason.BAD_VALUE, f"{name} longer than {MAX_ID_CHARS} chars")
    return text or None


def _features(value: object) -> dict[str, Feature]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidEvent(Reason.WRONG_TYPE, "features must be an object")
    out: dict[str, Feature] = {}
    for key, item in value.items():
        if isinstance(item, bool) or not isinstance(item, int | float | str):
            raise InvalidEvent(
                Reason.WRONG_TYPE, f"feature {key[:32]!r} must be a number or string"
            )
        if isinstance(item, float) and not math.isfinite(item):
            raise InvalidEvent(Reason.BAD_VALUE, f"feature {key[:32]!r} is not finite")
        out[key] = float(item) if isinstance(item, int) else item
    return out
