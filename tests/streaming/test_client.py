"""ScoreClient.score asks again while the answer is not_served, until its timeout (no broker:
``submit`` is replaced by answers given in order)."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from serving.requests import NOT_SERVED
from streaming.client import ScoreClient

NOT_SERVED_ANSWER = {"request_id": "r", "error": {"code": NOT_SERVED, "detail": "moving"}}
SCORED = {"request_id": "r", "scores": [0.5], "history_length": 3}


def client_answering(*answers: dict[str, Any]) -> tuple[ScoreClient, list[str]]:
    client = ScoreClient.__new__(ScoreClient)  # no Kafka: only score()'s loop is under test
    asked: list[str] = []
    queue = list(answers)

    def submit(user_id: str, items: list[str], **_: object) -> Future[dict[str, Any]]:
        asked.append(user_id)
        future: Future[dict[str, Any]] = Future()
        future.set_result(queue.pop(0))
        return future

    client.submit = submit  # type: ignore[method-assign]
    return client, asked


def test_a_not_served_answer_is_asked_again_until_one_is_scored() -> None:
    client, asked = client_answering(NOT_SERVED_ANSWER, NOT_SERVED_ANSWER, SCORED)
    assert client.score("u1", ["1"], timeout=5.0) == SCORED
    assert asked == ["u1", "u1", "u1"]


def test_past_the_timeout_the_not_served_answer_is_returned() -> None:
    client, asked = client_answering(*[NOT_SERVED_ANSWER] * 10)
    assert client.score("u1", ["1"], timeout=0.3) == NOT_SERVED_ANSWER
    assert 1 <= len(asked) <= 3
