"""Scoring end to end against the real broker: Kafka and HTTP answers, explanations, bad input,
and 100 hot reloads (one of them corrupt) under continuous requests without a failed request.

The worker holds the state of the ``taobao_users`` log (the real one, or its generated stand-in
on a machine without ../shared/data: the ``taobao_log`` fixture says which).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer

from contracts.settings import Settings
from feature_store import stable_ids
from streaming.admin import ensure_topics, read_topic
from streaming.client import ScoreClient
from streaming.producer import EventProducer
from streaming.replay import replay
from streaming.sources import read_events
from tests.support.data import BehaviourLog
from tests.support.snapshots import write_scoring_snapshot
from tests.support.waiting import wait_until
from tests.support.worker_http import http_json
from tests.support.workers import WorkerProcess, wait_caught_up
from trainer.announce import announce

pytestmark = [pytest.mark.integration, pytest.mark.slow]
HTTP_PORT = 28_811


@pytest.fixture()
def serving(settings: Settings, tmp_path: Path, taobao_log: BehaviourLog):
    events, _ = read_events(taobao_log.path, "taobao")
    ensure_topics(settings)
    with EventProducer(settings) as producer:
        replay(events, producer, progress=False)
    items = stable_ids([e.item_id for e in events])
    cats = stable_ids([e.category_id for e in events])
    snaps = tmp_path / "snapshots"
    write_scoring_snapshot(snaps, 1, items, cats)
    extra = ("--snapshot-dir", str(snaps), "--http-port", str(HTTP_PORT))
    with WorkerProcess(settings, tmp_path / "w", tmp_path / "w.log", *extra):
        wait_caught_up(settings)
        yield events, snaps, items, cats


def test_scores_on_kafka_and_http_with_explanations_and_bad_input(settings, serving) -> None:
    events, _, _, _ = serving
    user = events[-1].user_id
    candidates = [e.item_id for e in events[:100]]
    with ScoreClient(settings) as client:
        answer = _await_model(client, user, candidates)
        assert len(answer["scores"]) == 100 and answer["model_version"] == 1
        assert answer["history_length"] > 0
        assert answer["explanations"][0] and all("weight" in b for b in answer["explanations"][0])
        unknown = client.score("nobody", ["no-such-item", candidates[0]])
        assert unknown["history_length"] == 0 and len(unknown["scores"]) == 2
        assert client.score(user, [])["error"]["code"] == "no_candidates"
    five = orjson.dumps({"user_id": user, "items": candidates[:5]})
    status, http_answer = http_json(HTTP_PORT, "/score", five)
    assert status == 200 and len(http_answer["scores"]) == 5
    for body, code in [
        (b"{not json", "bad_json"),
        (orjson.dumps({"user_id": user, "items": []}), "no_candidates"),
        (orjson.dumps({"user_id": user, "items": [str(i) for i in range(100_000)]}), "too_large"),
        (orjson.dumps({"user_id": [1], "items": ["1"]}), "wrong_type"),
    ]:
        status, bad = http_json(HTTP_PORT, "/score", body)
        assert status in (400, 413) and bad["error"]["code"] == code
    raw = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    raw.send(settings.topics.score_requests, key=b"u", value=b'{"request_id": "bad-1", "items": 3}')
    raw.flush()
    raw.close()
    answers = read_topic(settings, settings.topics.scores, idle_timeout_s=5)
    errors = [orjson.loads(r.value) for r in answers if b"bad-1" in r.value]
    assert errors and errors[0]["error"]["code"] == "wrong_type"  # answered, not crashed


def test_100_reloads_under_load_with_a_corrupt_one_lose_no_request(settings, serving) -> None:
    events, snaps, items, cats = serving
    user, candidates = events[-1].user_id, [e.item_id for e in events[:100]]
    answers: list[dict] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        with ScoreClient(settings) as client:
            _await_model(client, user, candidates)
            while not stop.is_set():
                try:
                    answers.append(client.score(user, candidates, timeout=10))
                except BaseException as err:  # every failure counts
                    failures.append(err)

    thread = threading.Thread(target=load)
    thread.start()
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    corrupt_version = 50
    for version in range(2, 102):
        written = write_scoring_snapshot(snaps, version, items, cats)
        if version == corrupt_version:
            weights = written.path / "model.safetensors"
            data = bytearray(weights.read_bytes())
            data[-1] ^= 0xFF
            weights.write_bytes(bytes(data))
        announce(producer, settings.topics.model_updates, written)
        producer.flush()
        time.sleep(0.05)  # on purpose: the reloads are spread over the requests, not one burst

    def served_the_last() -> bool:
        if failures or not thread.is_alive():
            return True  # the assertions below say what went wrong
        return bool(answers) and answers[-1].get("model_version") == 101

    wait_until(served_the_last, timeout_s=60, what="an answer from the last version, 101")
    stop.set()
    thread.join(timeout=60)
    producer.close()
    assert not failures
    assert answers and all("error" not in a for a in answers)
    versions = [a["model_version"] for a in answers]
    assert versions == sorted(versions) and versions[-1] == 101
    assert corrupt_version not in versions


def _await_model(client: ScoreClient, user: str, items: list[str]) -> dict:
    def loaded() -> dict | None:
        answer = client.score(user, items, explain=True)
        if "error" not in answer:
            return answer
        assert answer["error"]["code"] == "no_model"
        return None

    return wait_until(loaded, timeout_s=60, what="the worker to load the first snapshot")
