"""A Python client for scores: send a request, await its answer by request id, with a timeout.

    with ScoreClient(Settings.from_env()) as client:
        answer = client.score("42", ["1001", "1002"], explain=True, timeout=5.0)

Answers are read from ``scores`` by a group-less consumer that starts at the end of the topic, so
several clients never steal each other's answers.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from types import TracebackType
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from contracts.settings import Settings
from serving.requests import NOT_SERVED, ScoreRequest, new_request_id

RETRY_S = 0.2  # pause before asking again after a not_served answer


class ScoreClient:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer = KafkaProducer(**settings.kafka_config(), acks="all", linger_ms=0)
        self._consumer = KafkaConsumer(**settings.kafka_config(), enable_auto_commit=False)
        topic = settings.topics.scores
        tps = [TopicPartition(topic, p) for p in range(settings.topics.events_partitions)]
        self._consumer.assign(tps)
        self._consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end position now, before any request is sent
            self._consumer.position(tp)
        self._waiting: dict[str, Future[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="score-client", daemon=True)
        self._thread.start()

    def submit(
        self,
        user_id: str,
        items: list[str],
        *,
        explain: bool = False,
        categories: list[str] | None = None,
    ) -> Future[dict[str, Any]]:
        req = ScoreRequest(
            request_id=new_request_id(),
            user_id=str(user_id),
            items=tuple(map(str, items)),
            categories=None if categories is None else tuple(map(str, categories)),
            explain=explain,
            sent_at=time.time(),
        )
        future: Future[dict[str, Any]] = Future()
        with self._lock:
            self._waiting[req.request_id] = future
        self._producer.send(
            self.settings.topics.score_requests, key=req.user_id.encode(), value=req.to_json()
        )
        self._producer.flush()
        return future

    def score(
        self,
        user_id: str,
        items: list[str],
        *,
        explain: bool = False,
        timeout: float = 10.0,
        categories: list[str] | None = None,
    ) -> dict[str, Any]:
        """Score and wait; raises ``TimeoutError`` when no answer came within ``timeout``. An
        answer ``not_served`` (the user's partition is moving between workers) is asked again
        until ``timeout``; the last one is returned."""
        deadline = time.monotonic() + timeout
        while True:
            future = self.submit(user_id, items, explain=explain, categories=categories)
            try:
                answer = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                with self._lock:
                    self._waiting = {k: f for k, f in self._waiting.items() if f is not future}
                raise TimeoutError(f"no score for user {user_id} within {timeout}s") from None
            if not _not_served(answer) or time.monotonic() + RETRY_S >= deadline:
                return answer
            time.sleep(RETRY_S)

    def _poll(self) -> None:
        while not self._stop.is_set():
            for records in self._consumer.poll(timeout_ms=100).values():
                for record in records:
                    self._resolve(orjson.loads(record.value))

    def _resolve(self, answer: dict[str, Any]) -> None:
        with self._lock:
            future = self._waiting.pop(str(answer.get("request_id")), None)
        if future is not None:
            future.set_result(answer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._producer.close()
        self._consumer.close()

    def __enter__(self) -> ScoreClient:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _not_served(answer: dict[str, Any]) -> bool:
    error = answer.get("error")
    return isinstance(error, dict) and error.get("code") == NOT_SERVED
