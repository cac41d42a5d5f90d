"""Score requests: every malformed request gets a coded error; valid ones parse exactly."""

from __future__ import annotations

import orjson
import pytest

from serving.requests import MAX_CANDIDATES, BadRequest, parse_request, request_id_of
from serving.scorer import ItemCatalog

OK = {"request_id": "r1", "user_id": "u", "items": ["1", 2]}


def code_of(raw: bytes) -> str:
    with pytest.raises(BadRequest) as info:
        parse_request(raw)
    return info.value.code


def test_valid_request_with_categories_and_explain() -> None:
    req = parse_request(orjson.dumps(OK | {"categories": [7, "8"], "explain": True, "top": 3}))
    assert (req.items, req.categories, req.explain, req.top) == (("1", "2"), ("7", "8"), True, 3)
    assert parse_request(req.to_json()) == req


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{oops", "bad_json"),
        (b"[1]", "not_object"),
        (orjson.dumps({"items": ["1"]}), "missing_field"),
        (orjson.dumps({"user_id": "u"}), "missing_field"),
        (orjson.dumps(OK | {"items": []}), "no_candidates"),
        (
            orjson.dumps(OK | {"items": [str(i) for i in range(MAX_CANDIDATES + 1)]}),
            "too_many_candidates",
        ),
        (orjson.dumps(OK | {"items": [str(i) for i in range(100_000)]}), "too_large"),
        (orjson.dumps(OK | {"items": "1,2"}), "wrong_type"),
        (orjson.dumps(OK | {"items": [1.5]}), "wrong_type"),
        (orjson.dumps(OK | {"user_id": ["u"]}), "wrong_type"),
        (orjson.dumps(OK | {"explain": "yes"}), "wrong_type"),
        (orjson.dumps(OK | {"top": 0}), "wrong_type"),
        (orjson.dumps(OK | {"categories": ["1"]}), "wrong_type"),
    ],
)
def test_bad_requests_get_a_code(raw: bytes, code: str) -> None:
    assert code_of(raw) == code


def test_request_id_is_recovered_for_error_answers() -> None:
    assert request_id_of(orjson.dumps({"request_id": "r9", "items": []})) == "r9"
    assert request_id_of(b"{garbage") is None


def test_catalog_is_bounded_and_falls_back_to_unknown() -> None:
    catalog = ItemCatalog(capacity=2)
    for item, cat in [("a", "1"), ("b", "2"), ("c", "3")]:
        catalog.learn(item, cat)
    assert catalog.categories(["a", "b", "c"]) == ["0", "2", "3"]
