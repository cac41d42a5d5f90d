"""Any producer, any key: events and score requests sent with a librdkafka client (confluent-kafka
and its default partitioner: CRC32 of the key, a random partition without one), some keyed by
another user than the body's and some with no key, reach the state of the user in their body and
are answered from it, once; a kill -9 of the worker mid-stream changes nothing.

Every user's state is checked three ways: its log in the state changelog (and the one partition
it was written to: its owner's), ``history_length`` of ``POST /score``, and that of a score request
sent on Kafka with confluent-kafka's partitioner and another user's key.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from contracts.settings import Settings
from feature_store import stable_ids
from streaming.admin import ensure_topics, read_topic
from streaming.routing import owner_partition
from tests.support.events import T0
from tests.support.snapshots import write_scoring_snapshot
from tests.support.waiting import wait_until
from tests.support.worker_http import healthz, post_score
from tests.support.workers import (
    WorkerProcess,
    read_changelog,
    wait_caught_up,
    wait_for_some_progress,
    wait_until_each_owns_partitions,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
HTTP_PORT = 28_851  # and 28_852 for a second process
USERS = [f"shopper-{i}" for i in range(20)]  # scored
CROWD = [f"crowd-{i}" for i in range(100)]
ITEMS = [f"item-{k}" for k in range(200)]
BAD = [b"{not json", b'{"item_id": "1", "type": "click", "ts": 1511539200}', b'{"user_id": 7}']
Record = tuple[bytes | None, bytes]  # Kafka key (None: no key), value


def event_log() -> tuple[list[Record], Counter[str]]:
    """About 10,000 clicks within 200 s of event time (inside the allowed lateness, so the order
    in which routed events arrive rejects none): 10 to 48 of each user of ``USERS`` (fewer than
    the model's sequence length, so ``history_length`` counts them all) among 90 of each of 100
    others; every 7th keyed by another user, every 11th with no key, every 13th with an event id
    of its own. Returns the records and each user's count."""
    counts = {u: 10 + 2 * i for i, u in enumerate(USERS)} | {u: 90 for u in CROWD}
    bodies = [user for user, n in counts.items() for _ in range(n)]
    random.Random(5).shuffle(bodies)
    everyone = [*USERS, *CROWD]
    records: list[Record] = []
    for j, user in enumerate(bodies):
        event: dict[str, Any] = {"user_id": user, "item_id": ITEMS[j % 200], "type": "click"}
        event |= {"category_id": f"cat-{j % 10}", "ts": T0 + j * 0.02}
        if j % 13 == 0:
            event["event_id"] = f"e-{j}"
        key = None if j % 11 == 0 else everyone[j % 120] if j % 7 == 0 else user
        records.append((None if key is None else key.encode(), orjson.dumps(event)))
    return records, Counter(bodies)


class LibrdkafkaProducer:
    """confluent-kafka with its default partitioner; remembers where each record landed."""

    def __init__(self, settings: Settings) -> None:
        self.producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
        self.landed: list[tuple[bytes, int]] = []  # (value, partition)
        self.failed: list[Any] = []

    def send(self, topic: str, records: list[Record], per_second: float | None = None) -> None:
        start = time.monotonic()
        for i, (key, value) in enumerate(records):
            if per_second is not None:
                time.sleep(max(0.0, start + i / per_second - time.monotonic()))
            self.producer.produce(topic, value, key, on_delivery=self._delivered)
            self.producer.poll(0)
        assert self.producer.flush(30) == 0 and not self.failed, self.failed

    def _delivered(self, err: Any, message: Any) -> None:
        if err is not None:
            self.failed.append(err)
        else:
            self.landed.append((message.value(), message.partition()))

    def off_owner(self, partitions: int) -> int:
        """How many valid records landed outside their body's user's partition."""
        users = [(orjson.loads(v)["user_id"], p) for v, p in self.landed if v not in BAD]
        return sum(1 for u, p in users if owner_partition(u, partitions) != p)


def worker_args(folder: Path) -> tuple[str, ...]:
    """A snapshot to score with, and the HTTP port."""
    categories = stable_ids([f"cat-{k}" for k in range(10)])
    write_scoring_snapshot(folder, 1, stable_ids(ITEMS), categories)
    return ("--snapshot-dir", str(folder), "--http-port", str(HTTP_PORT))


def assert_states_exact(settings: Settings, expected: Counter[str]) -> None:
    """Each user's state holds each of its events once, written to its owner's partition only."""
    states, _, written_to = read_changelog(settings)
    n = settings.topics.events_partitions
    assert {u: len(s.log) for u, s in states.items()} == dict(expected)
    assert all(s.total == len(s.log) for s in states.values())
    assert written_to == {u: {owner_partition(u, n)} for u in expected}


def dead_letters(settings: Settings) -> int:
    """The dead letters, once each bad message is there with its reason (a crash may have
    dead-lettered one twice, as before it was routed: the source header names it)."""
    dead = read_topic(settings, settings.topics.events_dlq, idle_timeout_s=3)
    reasons = {dict(r.headers)["source"]: dict(r.headers)["reason"] for r in dead}
    assert sorted(reasons.values()) == [b"bad_json", b"missing_field", b"missing_field"]
    return len(dead)


def serving(port: int) -> bool:
    return healthz(port)["model_version"] == 1


def history_over_http() -> dict[str, int]:
    """Once every worker serves the snapshot: each user's ``history_length`` from ``/score``."""

    def answered() -> dict[str, int] | None:
        answers = {u: post_score(HTTP_PORT, u, ITEMS[:3]) for u in USERS}
        if any("error" in a for a in answers.values()):
            return None
        return {u: int(a["history_length"]) for u, a in answers.items()}

    return wait_until(answered, timeout_s=90, what="every worker to serve the snapshot")


def history_over_kafka(settings: Settings, producer: LibrdkafkaProducer) -> dict[str, list[int]]:
    """Each user's request keyed by another user, on confluent-kafka's partition for that key:
    the ``history_length`` of every answer to it, by user."""
    requests = [
        (USERS[(i + 1) % 20].encode(), {"request_id": f"r-{u}", "user_id": u, "items": ITEMS[:3]})
        for i, u in enumerate(USERS)
    ]
    producer.send(settings.topics.score_requests, [(k, orjson.dumps(v)) for k, v in requests])
    answers: dict[str, list[int]] = {}

    def every_one_answered() -> dict[str, list[int]] | None:
        answers.clear()
        for record in read_topic(settings, settings.topics.scores, idle_timeout_s=3):
            answer = orjson.loads(record.value)
            user = answer["request_id"].removeprefix("r-")
            answers.setdefault(user, []).append(answer.get("history_length", -1))
        return answers if set(answers) == set(USERS) else None

    return wait_until(
        every_one_answered, timeout_s=60, what="an answer to every request", detail=answers.keys
    )


def test_librdkafka_events_and_requests_with_any_key_reach_their_users_state(
    settings: Settings, tmp_path: Path
) -> None:
    ensure_topics(settings)
    records, expected = event_log()
    producer = LibrdkafkaProducer(settings)
    with WorkerProcess(settings, tmp_path / "w", tmp_path / "w.log", *worker_args(tmp_path / "s")):
        producer.send(settings.topics.events, [(None, b) for b in BAD] + records)
        assert producer.off_owner(settings.topics.events_partitions) > len(records) // 2
        wait_caught_up(settings)
        assert_states_exact(settings, expected)
        assert history_over_http() == {u: expected[u] for u in USERS}
        answers = history_over_kafka(settings, producer)
    assert answers == {u: [expected[u]] for u in USERS}  # each request answered once
    assert dead_letters(settings) == len(BAD)


def test_two_worker_processes_send_what_the_other_owns_to_it(
    settings: Settings, tmp_path: Path
) -> None:
    """Events and score requests cross between the processes to reach their owner."""
    ensure_topics(settings)
    records, expected = event_log()
    producer = LibrdkafkaProducer(settings)
    extra = (*worker_args(tmp_path / "s"), "--processes", "2")
    with WorkerProcess(settings, tmp_path / "w", tmp_path / "w.log", *extra):
        dirs = [tmp_path / "w" / f"w{i}" for i in (0, 1)]
        owned = wait_until_each_owns_partitions(dirs, settings.topics.events_partitions)
        producer.send(settings.topics.events, records)
        wait_caught_up(settings)
        assert_states_exact(settings, expected)
        wait_until(
            lambda: all(serving(HTTP_PORT + i) for i in (0, 1)),
            timeout_s=90,
            what="both processes to serve the snapshot",
        )
        answers = history_over_kafka(settings, producer)
    assert not owned[0] & owned[1]
    assert answers == {u: [expected[u]] for u in USERS}  # each request answered once


def test_kill_9_mid_stream_then_restart_counts_every_event_once(
    settings: Settings, tmp_path: Path
) -> None:
    ensure_topics(settings)
    records, expected = event_log()
    producer = LibrdkafkaProducer(settings)
    half = len(records) // 2
    producer.send(settings.topics.events, [(None, b) for b in BAD] + records[:half])
    worker = WorkerProcess(settings, tmp_path / "w", tmp_path / "w.log")
    wait_for_some_progress(settings)
    rest = threading.Thread(
        target=producer.send, args=(settings.topics.events, records[half:], 2_000.0)
    )
    rest.start()  # about 2.5 s of events; the kill lands in the middle of them
    time.sleep(1.2)
    worker.kill()
    with WorkerProcess(settings, tmp_path / "w", tmp_path / "w.log", *worker_args(tmp_path / "s")):
        rest.join(timeout=60)
        wait_caught_up(settings)
        assert_states_exact(settings, expected)
        assert history_over_http() == {u: expected[u] for u in USERS}
    dead_letters(settings)
