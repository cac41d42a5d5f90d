"""Replay of real Taobao histories (157 users) through the partition worker.

Checks against an offline computation over the sorted log: sessions per behaviour, the recent
sequence of every sample (the user's last L behaviours strictly before it), negatives outside the
user's history, and cluster sequences that partition each user's clustered log."""

from __future__ import annotations

import csv
from collections import defaultdict

import numpy as np
import pytest

from contracts.schema import TYPE_ALIASES, Event
from feature_store.ids import stable_id
from feature_store.ingest import FeatureConfig, PartitionWorker
from feature_store.sample_format import decode_samples
from feature_store.samples import SampleConfig
from feature_store.state import StateConfig
from feature_store.store import MemoryStore
from tests.support.data import shared_file

L = 50


@pytest.fixture(scope="module")
def taobao() -> list[Event]:
    path = shared_file("taobao_users", "UserBehavior.csv")
    with path.open() as f:
        rows = list(csv.reader(f))
    events = [
        Event(u, item, TYPE_ALIASES[kind], float(ts), cat, event_id=f"taobao/{i}")
        for i, (u, item, cat, kind, ts) in enumerate(rows)
    ]
    return sorted(events, key=lambda e: e.ts)  # stable: file order breaks ties


def reference(events: list[Event]) -> dict[str, tuple[list[float], list[int], list[int]]]:
    """Per user: sorted ts, session index (gap > 30 min), item keys."""
    by_user: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        by_user[e.user_id].append(e)
    out = {}
    for user, evs in by_user.items():
        ts = [e.ts for e in evs]
        sessions = np.concatenate([[0], np.cumsum(np.diff(ts) > 1800)]).tolist()
        out[user] = (ts, sessions, [stable_id(e.item_id) for e in evs])
    return out


def test_taobao_replay_matches_offline(taobao: list[Event]) -> None:
    config = FeatureConfig(
        state=StateConfig(recent_length=L), samples=SampleConfig(recent_length=L)
    )
    store = MemoryStore()
    worker = PartitionWorker(store, 0, config)
    records = list(enumerate(taobao))
    blobs: list[bytes] = []
    for k in range(0, len(records), 1_000):
        result = worker.process(records[k : k + 1_000])
        worker.commit(result)
        assert not result.rejected and not result.duplicates
        blobs += result.samples
    ref = reference(taobao)
    assert sorted(store.users()) == sorted(ref)
    n_sessions = []
    for user, (ts, sessions, _) in ref.items():
        state = store.get(user)
        assert state is not None
        assert state.log["ts"].tolist() == ts and state.log["session"].tolist() == sessions
        n_sessions.append(state.session_count)
        clusters = state.clusters()
        assert int(clusters["size"].sum()) == state.total  # every behaviour once
    assert 10 < np.mean(n_sessions) < 20  # README: about 15 sessions per user at 30 minutes

    assert len(blobs) == len(taobao)  # every pv/cart/fav/buy is a positive
    seen: dict[int, list[int]] = defaultdict(list)
    for start in range(0, len(blobs), 2_048):
        a = decode_samples(blobs[start : start + 2_048], recent_length=L)
        positives = np.flatnonzero(a.label == 1.0)
        for row in positives:
            key, item = int(a.user[row]), int(a.target_item[row])
            history = seen[key]
            assert a.hist_item[row][a.hist_mask[row]].tolist() == history[-L:]
            end = row + 1
            while end < a.size and a.label[end] == 0.0 and a.user[end] == key:
                end += 1
            assert not set(a.target_item[row + 1 : end].tolist()) & set(history)
            history.append(item)
