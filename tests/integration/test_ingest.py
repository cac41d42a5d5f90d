"""The Faust ingest worker on the real broker: sessions, recent sequences, crash, rebalance, DLQ.

The log is ``taobao_users`` (the real one, or its generated stand-in on a machine without
../shared/data: the ``taobao_log`` fixture says which).
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import orjson
import pytest
from kafka import KafkaProducer

from contracts.metrics import GroupLag
from contracts.schema import Event, EventType
from contracts.settings import Settings
from feature_store import UserState, decode_samples, stable_id
from streaming.admin import ensure_topics, read_topic
from streaming.app import APP_NAME
from streaming.producer import EventProducer
from streaming.replay import replay
from streaming.sources import read_events
from tests.support.data import BehaviourLog
from tests.support.waiting import wait_until
from tests.support.workers import (
    WorkerProcess,
    owned_partitions,
    read_changelog,
    wait_caught_up,
    wait_for_some_progress,
    wait_until_each_owns_partitions,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
GAP = 1800.0


def taobao_events(log: BehaviourLog) -> list[Event]:
    """The behaviours of the ``taobao_users`` log (real, or its generated stand-in)."""
    events, _ = read_events(log.path, "taobao")
    return events


def offline_sessions(events: list[Event]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per user: (ts, session index) over the time-sorted behaviours, split at gaps > 30 min."""
    per_user: dict[str, list[float]] = defaultdict(list)
    for e in events:
        per_user[e.user_id].append(e.ts)
    out = {}
    for user, ts in per_user.items():
        t = np.sort(np.array(ts))
        out[user] = (t, np.concatenate([[0], np.cumsum(np.diff(t) > GAP)]))
    return out


def send(settings: Settings, events: list[Event]) -> None:
    with EventProducer(settings) as producer:
        replay(events, producer, progress=False)


def wait_until_committed(settings: Settings) -> dict[int, int]:
    """The group's lag on ``events`` once it is 0 on every partition: the offsets the worker
    acknowledged batch by batch are committed, up to the end and not beyond."""
    lag = GroupLag(settings.kafka_config(), f"{settings.topics.prefix}{APP_NAME}")
    partitions = range(settings.topics.events_partitions)
    topics = {"ingest": settings.topics.events}
    seen: dict[int, int] = {}

    def committed() -> dict[int, int] | None:
        seen.clear()
        seen.update(lag.sample(topics, partitions)["ingest"])
        return dict(seen) if not any(seen.values()) else None

    try:
        return wait_until(
            committed, timeout_s=30, what="the offsets committed", detail=lambda: seen
        )
    finally:
        lag.close()


def assert_states_match(states: dict[str, UserState], events: list[Event]) -> None:
    expected = offline_sessions(events)
    assert set(states) == set(expected)
    for user, (ts, sessions) in expected.items():
        log = states[user].log
        assert np.array_equal(log["ts"], ts), user
        assert np.array_equal(log["session"], sessions), user
        assert states[user].session_count == sessions[-1] + 1


def test_sessions_and_recent_sequences_match_an_offline_computation(
    settings: Settings, tmp_path: Path, taobao_log: BehaviourLog
) -> None:
    events = taobao_events(taobao_log)
    ensure_topics(settings)
    send(settings, events)
    with WorkerProcess(settings, tmp_path / "w", tmp_path / "w.log"):
        states = wait_caught_up(settings)
        lags = wait_until_committed(settings)
    assert_states_match(states, events)
    assert set(lags) == set(range(settings.topics.events_partitions))
    samples = read_topic(settings, settings.topics.samples, idle_timeout_s=5)
    batch = decode_samples([r.value for r in samples])
    history: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for e in events:  # replay order = event-time order, ties in file order
        history[stable_id(e.user_id)].append((e.ts, stable_id(e.item_id)))
    positives = np.flatnonzero(batch.label == 1.0)
    assert positives.size == len(events)  # every behaviour in the log is a click/cart/fav/buy
    for row in positives[:: max(1, positives.size // 500)]:
        seq = history[int(batch.user[row])]
        target = (float(batch.ts[row]), int(batch.target_item[row]))
        got = batch.hist_item[row][batch.hist_mask[row]].tolist()
        candidates = [[i for _, i in seq[:k]][-200:] for k, ev in enumerate(seq) if ev == target]
        assert got in candidates, f"row {row}: recent sequence differs from the last 200 before it"


def test_kill_9_mid_replay_then_restart_equals_an_uninterrupted_run(
    settings: Settings, tmp_path: Path, taobao_log: BehaviourLog
) -> None:
    events = taobao_events(taobao_log)
    ensure_topics(settings)
    send(settings, events[: len(events) // 2])
    worker = WorkerProcess(settings, tmp_path / "w", tmp_path / "w.log")
    wait_for_some_progress(settings)
    send(settings, events[len(events) // 2 :])
    time.sleep(0.5)  # on purpose: the kill lands at some point of the second half's processing
    worker.kill()  # kill -9 while the second half streams in
    with WorkerProcess(settings, tmp_path / "w", tmp_path / "w.log"):
        states = wait_caught_up(settings)
    assert_states_match(states, events)  # no event counted twice, none lost
    assert all(s.total == len(s.log) for s in states.values())


def test_second_worker_mid_stream_takes_partitions_with_their_state(
    settings: Settings, tmp_path: Path, taobao_log: BehaviourLog
) -> None:
    events = taobao_events(taobao_log)
    ensure_topics(settings)
    send(settings, events[: len(events) // 3])
    a = WorkerProcess(settings, tmp_path / "a", tmp_path / "a.log")
    wait_for_some_progress(settings)
    b = WorkerProcess(settings, tmp_path / "b", tmp_path / "b.log")
    wait_until_each_owns_partitions(
        [tmp_path / "a", tmp_path / "b"], settings.topics.events_partitions
    )
    send(settings, events[len(events) // 3 :])
    with a, b:
        states = wait_caught_up(settings)
        # while both run: each partition's state on exactly one worker
        owned_a, owned_b = owned_partitions(tmp_path / "a"), owned_partitions(tmp_path / "b")
    assert owned_a and owned_b and not owned_a & owned_b
    assert_states_match(states, events)
    _, _, partitions = read_changelog(settings)
    assert all(len(p) == 1 for p in partitions.values())  # each user in one partition


def test_one_command_runs_several_worker_processes_that_share_the_partitions(
    settings: Settings, tmp_path: Path, taobao_log: BehaviourLog
) -> None:
    events = taobao_events(taobao_log)
    ensure_topics(settings)
    send(settings, events[: len(events) // 3])
    with WorkerProcess(settings, tmp_path / "w", tmp_path / "w.log", "--processes", "2") as w:
        dirs = [tmp_path / "w" / f"w{i}" for i in (0, 1)]
        owned = wait_until_each_owns_partitions(dirs, settings.topics.events_partitions)
        send(settings, events[len(events) // 3 :])
        states = wait_caught_up(settings)
    assert w.proc.returncode == 0  # SIGTERM stopped both processes cleanly
    assert not owned[0] & owned[1]
    assert_states_match(states, events)


def test_bad_input_goes_to_the_dlq_and_valid_state_is_unaffected(
    settings: Settings, tmp_path: Path, taobao_log: BehaviourLog
) -> None:
    events = taobao_events(taobao_log)[:3000]
    ensure_topics(settings)
    bad = [
        b"{not json",
        orjson.dumps({"user_id": 1, "item_id": [1], "type": "click", "ts": 1511658000}),
        orjson.dumps({"user_id": "1", "item_id": 1, "type": "click", "ts": 99}),
        orjson.dumps({"user_id": "1", "item_id": 1, "type": "teleport", "ts": 1511658000}),
        b"x" * (10 * 1024 * 1024),
        b"\xff\xfe\xfd",
    ]
    raw = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, max_request_size=16 * 2**20)
    for i, e in enumerate(events):
        raw.send(settings.topics.events, key=e.key, value=e.to_json())
        if i % 500 == 0:
            raw.send(settings.topics.events, key=e.key, value=bad[(i // 500) % len(bad)])
    raw.flush()
    raw.close()
    with WorkerProcess(settings, tmp_path / "w", tmp_path / "w.log"):
        states = wait_caught_up(settings)
    assert_states_match(states, events)
    dlq = read_topic(settings, settings.topics.events_dlq, expected=len(bad))
    reasons = sorted(dict(r.headers)["reason"].decode() for r in dlq)
    assert reasons == sorted(
        ["bad_json", "wrong_type", "bad_timestamp", "unknown_type", "oversize", "not_utf8"]
    )
    assert {len(r.value) for r in dlq} >= {10 * 1024 * 1024}  # raw bytes kept
    assert all(dict(r.headers)["source"].startswith(settings.topics.events.encode()) for r in dlq)


def test_pending_impressions_move_with_their_partition(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Explicit mode: impressions still waiting for their click when the partitions move to a
    worker on an empty disk are joined with the click there (they travel in the changelog)."""
    monkeypatch.setenv("TWINSTREAM_SAMPLE_MODE", "explicit")
    ensure_topics(settings)
    t0, users = 1_700_000_000.0, [f"u{i}" for i in range(40)]

    def shown(user: str, item: int) -> Event:
        ts, eid = t0 + item, f"{user}-imp{item}"
        return Event(user, f"i{item}", EventType.IMPRESSION, ts, "c", eid, f"{user}-r")

    send(settings, [shown(u, item) for u in users for item in (0, 1)])
    with WorkerProcess(settings, tmp_path / "a", tmp_path / "a.log"):
        wait_caught_up(settings)
    clicks = [Event(u, "i0", EventType.CLICK, t0 + 60, "c", f"{u}-click", f"{u}-r") for u in users]
    send(settings, clicks)
    with WorkerProcess(settings, tmp_path / "b", tmp_path / "b.log"):
        wait_caught_up(settings)
        records = read_topic(settings, settings.topics.samples, expected=len(users))
    samples = decode_samples([r.value for r in records], recent_length=8)
    assert samples.size == len(users) and (samples.label == 1.0).all()
    assert sorted(samples.target_item.tolist()) == [stable_id("i0")] * len(users)
