"""The event schema: every rule of ARCHITECTURE.md section 2 gives its reason; valid events pass."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.schema import EventType, InvalidEvent, Reason, parse_event

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
