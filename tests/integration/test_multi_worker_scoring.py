"""Three worker processes answer every score request from the state of its user's owner.

``twinstream worker --processes 3`` shares the 4 partitions of ``events`` out among three
processes; ``twinstream replay`` sends a generated Taobao-format log of 30 users. Then every
user is scored over HTTP on each of the three processes (two of them do not own the user's
partition and forward the request to the one that does) and once over Kafka (``ScoreClient``:
the request lands on the user's partition of ``score-requests``, which must belong to the worker
that holds the same partition of ``events``). Every answer's ``history_length`` must be the
user's behaviour count: an answer from a worker without the user's state says 0. (With aiokafka's
round-robin assignor, before :mod:`streaming.transport` chose Faust's, 60 of the 90 HTTP answers
and all 30 Kafka answers said 0.)
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from contracts.schema import Event
from contracts.settings import RECENT_LENGTH, Settings
from feature_store import stable_ids
from streaming.admin import ensure_topics
from streaming.client import ScoreClient
from streaming.routing import owner_partition
from streaming.sources import read_events
from streaming.synthetic import GeneratorConfig, generate
from tests.support.processes import deployment_env, twinstream
from tests.support.snapshots import write_scoring_snapshot
from tests.support.waiting import wait_until
from tests.support.worker_http import healthz, post_score
from tests.support.workers import (
    WorkerProcess,
    wait_caught_up,
    wait_until_each_owns_partitions,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PROCESSES = 3
HTTP_PORT = 28_891  # process i serves on HTTP_PORT + i
LOG = GeneratorConfig(users=30, long_users=0, mean_sessions=4, categories=20, seed=11)
Answers = dict[str, list[int]]  # user -> history_length of each answer


def write_log(path: Path) -> list[Event]:
    """The generated log, written in the Taobao format; its behaviours."""
    generate(LOG).write(path)
    events, _ = read_events(path, "taobao")
    return events


def replay(settings: Settings, path: Path) -> None:
    """``twinstream replay`` of the log at ``path``, to its end."""
    args = ("replay", str(path), "--format", "taobao", "--no-progress")
    done = twinstream(*args, env=deployment_env(settings))
    assert done.returncode == 0, done.stdout + done.stderr


def snapshot_args(folder: Path, events: list[Event]) -> tuple[str, ...]:
    """A snapshot that knows the log's items and categories, to score with."""
    items = stable_ids(sorted({e.item_id for e in events}))
    categories = stable_ids(sorted({e.category_id or "" for e in events}))
    write_scoring_snapshot(folder, 1, items, categories)
    return ("--snapshot-dir", str(folder))


def serving(port: int) -> bool:
    return healthz(port).get("model_version") == 1


def history_over_http(users: list[str], item: str) -> Answers:
    """Each user's ``history_length`` from ``POST /score`` on every process, in port order."""
    answers: Answers = {}
    for user in users:
        for port in range(HTTP_PORT, HTTP_PORT + PROCESSES):
            answer = post_score(port, user, [item])
            answers.setdefault(user, []).append(int(answer.get("history_length", -1)))
    return answers


def history_over_kafka(settings: Settings, users: list[str], item: str) -> Answers:
    """Each user's ``history_length`` from one score request on Kafka, keyed by the user."""
    with ScoreClient(settings) as client:
        futures: dict[str, Future[dict[str, Any]]] = {u: client.submit(u, [item]) for u in users}
        answers = {u: future.result(timeout=30) for u, future in futures.items()}
    return {u: [int(answer.get("history_length", -1))] for u, answer in answers.items()}


def wrong(answers: Answers, expected: Counter[str]) -> int:
    return sum(1 for user, got in answers.items() for n in got if n != expected[user])


def test_three_worker_processes_answer_every_user_from_its_owners_state(
    settings: Settings, tmp_path: Path
) -> None:
    ensure_topics(settings)
    n = settings.topics.events_partitions
    events = write_log(tmp_path / "UserBehavior.csv")
    expected = Counter(e.user_id for e in events)
    users, item = sorted(expected), events[0].item_id
    assert len(users) == LOG.users and max(expected.values()) < RECENT_LENGTH
    assert {owner_partition(u, n) for u in users} == set(range(n))  # every partition scored
    extra = ("--http-port", str(HTTP_PORT), "--processes", str(PROCESSES))
    args = (*snapshot_args(tmp_path / "snaps", events), *extra)
    with WorkerProcess(settings, tmp_path / "w", tmp_path / "w.log", *args) as worker:
        dirs = [tmp_path / "w" / f"w{i}" for i in range(PROCESSES)]
        owned = wait_until_each_owns_partitions(dirs, n)
        replay(settings, tmp_path / "UserBehavior.csv")
        states = wait_caught_up(settings)
        assert {u: s.total for u, s in states.items()} == dict(expected)
        wait_until(
            lambda: all(serving(HTTP_PORT + i) for i in range(PROCESSES)),
            timeout_s=90,
            what="every process to serve the snapshot",
        )
        over_http = history_over_http(users, item)
        over_kafka = history_over_kafka(settings, users, item)
        assert worker.proc.poll() is None
    checked = sum(map(len, over_http.values())) + sum(map(len, over_kafka.values()))
    bad_http, bad_kafka = wrong(over_http, expected), wrong(over_kafka, expected)
    print(
        f"\n{len(users)} users, {checked} answers checked, owned {owned}: "
        f"{bad_http} wrong over HTTP, {bad_kafka} wrong over Kafka"
    )
    assert not any(a & b for i, a in enumerate(owned) for b in owned[i + 1 :])
    assert over_http == {u: [expected[u]] * PROCESSES for u in users}
    assert over_kafka == {u: [expected[u]] for u in users}
