"""ScoringService: requests are parsed, answered from the owned partition's state, and counted
by transport and outcome; a bad request is answered with its code, never raised."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from feature_store import UserState
from serving.metrics import ScoringMetrics
from serving.requests import ScoreRequest
from serving.scorer import ItemCatalog
from streaming.partitions import OwnedPartitions
from streaming.scoring import ScoringService
from tests.support.events import event


class RecordingScorer:
    """Answers every request with ok and remembers the state it was given."""

    def __init__(self) -> None:
        self.seen: list[tuple[ScoreRequest, UserState | None]] = []

    def score(self, req: ScoreRequest, state: UserState | None) -> dict[str, Any]:
        self.seen.append((req, state))
        return {"request_id": req.request_id, "scores": [0.5] * len(req.items)}


@pytest.fixture()
def service(partitions: OwnedPartitions) -> ScoringService:
    return ScoringService(partitions, ItemCatalog(), ScoringMetrics.create(CollectorRegistry()))


def requests_counted(service: ScoringService, transport: str, outcome: str) -> float | None:
    labels = {"transport": transport, "outcome": outcome}
    return service.metrics.registry.get_sample_value("twinstream_score_requests_total", labels)


def request(user: str = "u1", **fields: object) -> bytes:
    return orjson.dumps({"user_id": user, "items": ["1", "2"]} | fields)


async def test_a_bad_request_is_answered_with_its_code(service: ScoringService) -> None:
    answer = service.answer(b'{"request_id": "r1", "user_id": 3', 0, "kafka")
    assert answer["error"]["code"] == "bad_json" and answer["request_id"] is None
    answer = service.answer(orjson.dumps({"request_id": "r2", "user_id": "u"}), 0, "http")
    assert answer == {
        "request_id": "r2",
        "error": {"code": "missing_field", "detail": answer["error"]["detail"]},
    }
    assert service.answer(None, None, "kafka")["error"]["code"] == "bad_json"
    assert requests_counted(service, "kafka", "bad_json") == 2
    assert requests_counted(service, "http", "missing_field") == 1
    assert service.metrics.registry.get_sample_value("twinstream_score_seconds_count") is None


async def test_without_a_model_the_answer_is_no_model(
    service: ScoringService, partitions: OwnedPartitions
) -> None:
    await partitions.own([0])
    answer = service.answer(request(request_id="r3"), 0, "http")
    assert answer["request_id"] == "r3" and answer["error"]["code"] == "no_model"
    assert requests_counted(service, "http", "no_model") == 1


async def test_the_state_comes_from_the_owned_partition(
    service: ScoringService, partitions: OwnedPartitions
) -> None:
    await partitions.own([0])
    worker = partitions.workers[0]
    worker.commit(worker.process([(0, event(0.0, user="u1"))]))
    scorer = RecordingScorer()
    service.scorer = scorer  # type: ignore[assignment]
    assert "error" not in service.answer(request("u1"), 0, "kafka")
    assert "error" not in service.answer(request("nobody"), 0, "kafka")  # unknown user: no state
    states = [state for _, state in scorer.seen]
    assert states[0] is not None and len(states[0].log) == 1
    assert states[1:] == [None]
    assert requests_counted(service, "kafka", "ok") == 2
    latency = service.metrics.registry.get_sample_value(
        "twinstream_score_seconds_count", {"transport": "kafka"}
    )
    assert latency == 2


async def test_a_partition_not_held_here_is_not_served_rather_than_answered_empty(
    service: ScoringService, partitions: OwnedPartitions
) -> None:
    await partitions.own([0])
    scorer = RecordingScorer()
    service.scorer = scorer  # type: ignore[assignment]
    for partition, transport in ((1, "kafka"), (None, "http")):  # not ours; none known
        answer = service.answer(request("u1", request_id="r"), partition, transport)
        assert answer["request_id"] == "r" and answer["error"]["code"] == "not_served"
        assert requests_counted(service, transport, "not_served") == 1
    assert scorer.seen == []  # nothing was scored from an empty history


async def test_sent_at_times_request_to_answer(
    service: ScoringService, partitions: OwnedPartitions
) -> None:
    await partitions.own([0])
    service.scorer = RecordingScorer()  # type: ignore[assignment]
    service.answer(request(sent_at=time.time() - 2.0), 0, "http")
    service.answer(request(sent_at=time.time() + 60.0), 0, "http")  # clock skew: 0, not < 0
    service.answer(request(), 0, "http")
    registry = service.metrics.registry
    assert registry.get_sample_value("twinstream_score_request_to_answer_seconds_count") == 2
    total = registry.get_sample_value("twinstream_score_request_to_answer_seconds_sum")
    assert total is not None and 2.0 <= total < 10.0
