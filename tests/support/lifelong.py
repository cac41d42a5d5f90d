"""Users with long histories made directly (not event by event), written as the worker writes
them, and the state changelog as Kafka's compaction leaves it."""

from __future__ import annotations

import numpy as np

from contracts.schema import Event
from feature_store.cluster_config import ClusterConfig
from feature_store.state import Admission, LateEvent, StateConfig, UserState
from feature_store.state_delta import Records
from ops.bench import bench_lifelong
from ops.bench.bench_lifelong import write_through
from tests.support.events import T0, event

__all__ = ["applied", "compacted", "copy", "lifelong_state", "tail_events", "write_through"]


def lifelong_state(n: int, seed: int = 0, ring: int = 1_024) -> UserState:
    """``n`` clicks one a minute up to ``T0``, items and categories that :func:`tail_events`
    meets again (the benchmark's builder, :func:`ops.bench.bench_lifelong.lifelong_state`)."""
    return bench_lifelong.lifelong_state(n, seed, ring, items=100_000, categories=300, end=T0)


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
