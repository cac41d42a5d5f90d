"""Replay onto the real broker and read back: once each, in event-time order per user.

The log is ``taobao_users`` (the real one, or its generated stand-in on a machine without
../shared/data: the ``taobao_log`` fixture says which).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from contracts.settings import Settings
from streaming.admin import ensure_topics, read_topic
from streaming.producer import EventProducer
from streaming.replay import replay
from streaming.sources import read_events
from tests.support.data import BehaviourLog

pytestmark = pytest.mark.integration


def _replay_file(settings: Settings, path: Path) -> tuple[list, list]:
    events, _ = read_events(path, "taobao")
    ensure_topics(settings)
    with EventProducer(settings) as producer:
        stats = replay(events, producer, progress=False)
    assert stats.sent == len(events)
    return events, read_topic(settings, settings.topics.events, expected=len(events))


def test_taobao_users_arrive_once_in_event_time_order_per_user(
    settings: Settings, taobao_log: BehaviourLog
) -> None:
    events, records = _replay_file(settings, taobao_log.path)
    assert len(events) == taobao_log.rows  # 14,316 in the real log
    decoded = [orjson.loads(r.value) for r in records]
    ids = [d["event_id"] for d in decoded]
    assert len(ids) == len(set(ids)) == len(events)
    assert set(ids) == {e.event_id for e in events}
    per_user: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for record, d in zip(records, decoded, strict=True):
        assert record.key.decode() == d["user_id"]
        per_user[d["user_id"]].append((record.offset, d["ts"]))
    for user, seen in per_user.items():
        seen.sort()  # broker order within the user's partition
        ts = [t for _, t in seen]
        assert ts == sorted(ts), f"user {user} out of event-time order"
    partitions_of_user = defaultdict(set)
    for record in records:
        partitions_of_user[record.key].add(record.partition)
    assert all(len(p) == 1 for p in partitions_of_user.values())


def test_same_file_gives_same_messages_per_partition(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "small.csv"
    path.write_text(
        "".join(f"{u},{i},1,pv,{1511658000 + i}\n" for i in range(300) for u in (1, 2, 3))
    )
    _, first = _replay_file(settings, path)
    again = Settings.from_env(
        {
            "TWINSTREAM_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "TWINSTREAM_TOPIC_PREFIX": settings.topics.prefix + "again-",
        }
    )
    _, second = _replay_file(again, path)

    def by_partition(records: list) -> dict[int, list[bytes]]:
        out: dict[int, list[bytes]] = defaultdict(list)
        for r in sorted(records, key=lambda r: (r.partition, r.offset)):
            out[r.partition].append(r.value)
        return dict(out)

    assert by_partition(first) == by_partition(second)


def test_replay_with_bad_rows_sends_every_valid_row(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_bytes(
        b"1,1,1,pv,1511658000\n1,2,1,pv,nan\n\xff,3,1,pv,1511658001\n2,4,1,buy,1511658002\n"
    )
    events, records = _replay_file(settings, path)
    assert len(events) == len(records) == 2
