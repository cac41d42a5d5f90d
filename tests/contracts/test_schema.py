"""The event schema: every rule of ARCHITECTURE.md section 2 gives its reason; valid events pass."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.schema import (
    MAX_EVENT_BYTES,
    MAX_FUTURE_S,
    MIN_TS,
    EventType,
    InvalidEvent,
    Reason,
    parse_event,
    parse_plain_event,
)

NOW = 1_800_000_000.0
VALID = {"user_id": "u1", "item_id": 42, "type": "click", "ts": 1_511_658_000}


def reason_of(raw: bytes) -> Reason:
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw, now=NOW)
    return info.value.reason


def test_valid_event_normalises_ids_and_aliases() -> None:
    event = parse_event(orjson.dumps(VALID | {"type": "pv", "category_id": 3}), now=NOW)
    assert (event.user_id, event.item_id, event.category_id) == ("u1", "42", "3")
    assert event.type is EventType.CLICK
    assert event.key == b"u1"


def test_iso_timestamp_and_features() -> None:
    raw = VALID | {"ts": "2017-11-26T01:00:00Z", "features": {"dwell": 3, "device": "ios"}}
    event = parse_event(orjson.dumps(raw), now=NOW)
    assert event.ts == 1_511_658_000.0
    assert event.features == {"dwell": 3.0, "device": "ios"}


def test_round_trip_through_json() -> None:
    event = parse_event(orjson.dumps(VALID | {"event_id": "e1", "request_id": "r"}), now=NOW)
    assert parse_event(event.to_json(), now=NOW) == event


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", Reason.BAD_JSON),
        (b"[1, 2]", Reason.NOT_OBJECT),
        (b"\xff\xfe{}", Reason.NOT_UTF8),
        (orjson.dumps({k: v for k, v in VALID.items() if k != "item_id"}), Reason.MISSING_FIELD),
        (orjson.dumps(VALID | {"user_id": None}), Reason.MISSING_FIELD),
        (orjson.dumps(VALID | {"user_id": ""}), Reason.BAD_VALUE),
        (orjson.dumps(VALID | {"user_id": "x" * 129}), Reason.BAD_VALUE),
        (orjson.dumps(VALID | {"user_id": 1.5}), Reason.WRONG_TYPE),
        (orjson.dumps(VALID | {"item_id": True}), Reason.WRONG_TYPE),
        (orjson.dumps(VALID | {"type": "like"}), Reason.UNKNOWN_TYPE),
        (orjson.dumps(VALID | {"type": 3}), Reason.WRONG_TYPE),
        (orjson.dumps(VALID | {"ts": 5}), Reason.BAD_TIMESTAMP),
        (orjson.dumps(VALID | {"ts": NOW + 2 * 86400}), Reason.BAD_TIMESTAMP),
        (orjson.dumps(VALID | {"ts": "yesterday"}), Reason.BAD_TIMESTAMP),
        (orjson.dumps(VALID | {"ts": "2017-11-26T01:00:00"}), Reason.BAD_TIMESTAMP),
        (orjson.dumps(VALID | {"ts": [1]}), Reason.WRONG_TYPE),
        (b'{"user_id":"u","item_id":1,"type":"click","ts":NaN}', Reason.BAD_JSON),
        (orjson.dumps(VALID | {"features": [1]}), Reason.WRONG_TYPE),
        (orjson.dumps(VALID | {"features": {"a": {"b": 1}}}), Reason.WRONG_TYPE),
        (orjson.dumps(VALID | {"pad": "x" * 70_000}), Reason.OVERSIZE),
    ],
)
def test_each_rule_has_its_reason(raw: bytes, reason: Reason) -> None:
    assert reason_of(raw) is reason


def test_nan_timestamp_in_a_string_is_rejected() -> None:
    assert reason_of(orjson.dumps(VALID | {"ts": "nan"})) is Reason.BAD_TIMESTAMP
    assert math.isnan(float("nan"))


bad_values = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True),
    st.lists(st.integers(), max_size=2),
    st.text(max_size=3),
    st.text(min_size=129, max_size=140),
    st.dictionaries(st.text(), st.integers(), max_size=1),
)


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(["user_id", "item_id", "type", "ts"]), value=bad_values)
def test_any_bad_field_is_rejected_with_a_reason_or_accepted_as_valid(
    field: str, value: object
) -> None:
    """Generated garbage in one field never crashes: a clean reject or a consistent event."""
    try:
        raw = orjson.dumps(VALID | {field: value})
    except TypeError:
        return
    try:
        event = parse_event(raw, now=NOW)
    except InvalidEvent as err:
        assert isinstance(err.reason, Reason)
        return
    assert event.user_id and event.item_id and 946_684_800 <= event.ts <= NOW + 86_400


PLAIN_LIMIT = NOW + MAX_FUTURE_S
plain_ids = st.one_of(
    st.text(max_size=260),
    st.integers(-5, 2**63 - 1),
    st.sampled_from([None, True, 1.5, "", "x" * 128, "x" * 129, "x" * 256, "x" * 257, [], {}]),
)
plain_fields = {
    "user_id": plain_ids,
    "item_id": plain_ids,
    "category_id": plain_ids,
    "event_id": plain_ids,
    "request_id": plain_ids,
    "type": st.sampled_from(["click", "pv", "Click", "buy", "cart", "fav", "impression", "x", 3]),
    "ts": st.one_of(
        st.floats(allow_nan=False),
        st.integers(-(2**63), 2**63 - 1),
        st.sampled_from(
            [MIN_TS, MIN_TS - 1e-6, PLAIN_LIMIT, PLAIN_LIMIT + 1.0, "1511658000", None]
        ),
        st.floats(MIN_TS, PLAIN_LIMIT),
    ),
    "features": st.sampled_from([None, {}, {"dwell": 3}, "x"]),
    "extra": st.integers(0, 9),
}


@settings(max_examples=1500, deadline=None)
@given(
    record=st.fixed_dictionaries(
        {"user_id": plain_ids, "item_id": plain_ids, "type": plain_fields["type"]},
        optional={k: v for k, v in plain_fields.items() if k not in ("user_id", "item_id", "type")},
    )
)
def test_the_plain_fast_path_makes_what_the_general_parser_makes(record: dict[str, object]) -> None:
    """parse_plain_event (the ingest agent's path) returns None or exactly the general
    parser's event, every field equal; it never accepts what the general parser rejects."""
    raw = orjson.dumps(record)
    fast = parse_plain_event(raw, MAX_EVENT_BYTES, MIN_TS, PLAIN_LIMIT)
    if fast is None:
        return
    general = parse_event(raw, now=NOW)
    assert fast == general and repr(fast) == repr(general)
    assert type(fast.features) is dict and fast.features is not general.features


def test_the_usual_messages_take_the_plain_fast_path() -> None:
    """The shapes the producers send (ids as strings, a float or integer ts, with or without a
    category or an event id) are taken by the fast path and equal the general parser's."""
    usual = [
        {"user_id": "543462", "item_id": "1715", "category_id": "1464116", "type": "click"},
        {"user_id": "9", "item_id": "4591", "type": "pv", "event_id": "long10k:1"},
        {"user_id": "u" * 128, "item_id": "i", "type": "buy", "request_id": "r1"},
    ]
    for record in usual:
        for ts in (1_511_658_000.0, 1_511_658_000, MIN_TS, PLAIN_LIMIT):
            raw = orjson.dumps(record | {"ts": ts, "features": None})
            fast = parse_plain_event(raw, MAX_EVENT_BYTES, MIN_TS, PLAIN_LIMIT)
            assert fast is not None and fast == parse_event(raw, now=NOW)
    assert parse_plain_event(b'{"user_id": "u"', MAX_EVENT_BYTES, MIN_TS, PLAIN_LIMIT) is None
    big = orjson.dumps(usual[0] | {"ts": 1_511_658_000.0, "pad": "x" * 100})
    assert parse_plain_event(big, 100, MIN_TS, PLAIN_LIMIT) is None
