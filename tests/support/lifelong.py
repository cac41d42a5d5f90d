"""Users with long histories made directly (not event by event), written as the worker writes
them, and the state changelog as Kafka's compaction leaves it."""

from __future__ import annotations

import numpy as np

from contracts.schema import Event
from feature_store.cluster_config import ClusterConfig
from feature_store.clustering import ClusterState, update
from feature_store.state import Admission, LateEvent, StateConfig, UserState
from feature_store.state_delta import Records, changelog_state_records
from feature_store.state_format import behaviour_dtype
from feature_store.state_layout import mark_written, state_parts
from feature_store.store import StateStore
from tests.support.events import T0, event


def lifelong_state(n: int, seed: int = 0, ring: int = 1_024) -> UserState:
    """``n`` clicks one a minute up to ``T0``, sessions of 20, ``ring`` remembered event ids,
    clustered by category as the worker would have."""
    rng = np.random.default_rng(seed)
    log = np.zeros(n, dtype=behaviour_dtype(0))
    log["item"] = rng.integers(0, 100_000, n)
    log["category"] = log["item"] % 300
    log["ts"] = T0 - 60.0 * np.arange(n, 0, -1)
    log["type"] = 1
    log["session"] = np.arange(n) // 20
    return UserState(
        log,
        total=n,
        watermark=float(log["ts"][-1]),
        ring=rng.integers(1, 2**62, ring),
        ring_fill=ring,
        ring_pos=0,
        cluster_state=update(ClusterState(), log, 0, ClusterConfig()),
    )


def write_through(store: StateStore, user: str, state: UserState) -> Records:
    """Write ``state`` as the worker does (next version: changelog records, then the store's
    parts); its changelog records."""
    records = changelog_state_records(user, state)
    store.write_batch({user: state_parts(user, state)}, {})
    mark_written(state)
    return records


def copy(state: UserState) -> UserState:
    return UserState.decode(state.encode())


def applied(
    state: UserState, events: list[Event], config: StateConfig, clusters: ClusterConfig
) -> UserState:
    """``state`` with ``events`` applied in memory, as the worker applies them (the reference)."""
    for e in events:
        try:
            verdict = state.apply(e, config)
        except LateEvent:  # the DLQ's
            continue
        if verdict is Admission.APPLIED:
            state.maybe_recluster(clusters)
    return state


def tail_events(user: str, n: int, seed: int, start: float = 0.0) -> list[Event]:
    """``n`` clicks after ``T0 + start``, one in four late by up to 4 minutes (inserted before
    newer behaviours), one in ten a duplicate of the one before."""
    rng = np.random.default_rng(seed)
    out: list[Event] = []
    for i in range(n):
        if out and rng.random() < 0.1:
            out.append(out[-1])
            continue
        ts = start + 30.0 * i - (float(rng.integers(0, 240)) if rng.random() < 0.25 else 0.0)
        item = str(int(rng.integers(0, 100_000)))
        out.append(
            event(ts, item, user=user, category=str(int(item) % 300), event_id=f"{seed}/{i}")
        )
    return out


def compacted(records: Records) -> Records:
    """What a compacted topic keeps: each key's last record (tombstones gone), in log order."""
    last = {key: i for i, (key, _) in enumerate(records)}
    return [(k, v) for i, (k, v) in enumerate(records) if last[k] == i and v is not None]
