"""A batch's state writes in one pass (:func:`feature_store.state_writes.batch_state_writes`)
equal the per-user path (``changelog_state_records``, ``state_parts``, ``mark_written`` user by
user) record for record and byte for byte: new users, deltas, late events, duplicates, rings that
grow and wrap, the lifelong cap, re-clustering, checkpoints that fall due, dense features, small
states in inline heads and a state that outgrows one."""

from __future__ import annotations

from collections import Counter

import pytest

from contracts.schema import Event
from feature_store import state_writes
from feature_store.cluster_config import ClusterConfig
from feature_store.ingest import FeatureConfig, PartitionWorker
from feature_store.state import StateConfig, UserState
from feature_store.state_delta import Records, changelog_state_records
from feature_store.state_layout import Parts, mark_written, state_parts
from feature_store.store import MemoryStore
from tests.support.events import event
from tests.support.lifelong import lifelong_state, tail_events, write_through

CONFIGS = {
    "default": FeatureConfig(),
    "capped": FeatureConfig(
        state=StateConfig(lifelong_cap=300, recent_length=50, dedupe_window=200),
        clusters=ClusterConfig(lifelong_cap=300),
    ),
    "dense": FeatureConfig(state=StateConfig(dense_features=("price",))),
}


def per_user_writes(states: dict[str, UserState]) -> tuple[Records, dict[str, Parts]]:
    """The reference: the general functions, one user after the other."""
    changelog: Records = []
    parts: dict[str, Parts] = {}
    for user, state in states.items():
        changelog += changelog_state_records(user, state)
        parts[user] = state_parts(user, state)
        mark_written(state)
    return changelog, parts


def batches(n_batches: int, per_batch: int) -> list[list[tuple[int, Event]]]:
    """Short users (one or two events, many new in each batch), one that grows past an inline
    head, and long ones (the stored users of :func:`stored`, a few events each per batch: late
    ones, duplicates)."""
    long_events = {u: tail_events(u, 6 * n_batches, seed=i) for i, u in enumerate(LONG)}
    out, offset = [], 0
    for b in range(n_batches):
        records: list[Event] = []
        for k in range(per_batch):
            user = f"short-{(b * per_batch + k) // 2}"
            ts = 60.0 * b + k
            records.append(
                event(ts, str(k % 37), user=user, event_id=f"{user}/{k}", features={"price": 1.5})
            )
        for k in range(25):  # a new user that outgrows an inline head in the fifth batch
            ts = 60.0 * b + k
            records.append(event(ts, str(k), user="grower", event_id=f"grower/{b}/{k}"))
        for u in LONG:
            records += long_events[u][6 * b : 6 * (b + 1)]
        out.append([(offset + i, e) for i, e in enumerate(records)])
        offset += len(records)
    return out


LONG = ["long-a", "long-b", "long-c"]


def stored(store: MemoryStore, config: FeatureConfig) -> None:
    """Long users written as the worker writes them (not new: their rings full or growing)."""
    sizes = {"long-a": 280, "long-b": 1_000, "long-c": 20}
    for i, user in enumerate(LONG):
        ring = 16 if user == "long-c" else config.state.dedupe_window
        state = lifelong_state(sizes[user], seed=i, ring=ring)
        if config.state.n_dense:  # the stored users have no dense features: keep them short
            state = UserState.empty(config.state)
        write_through(store, user, state)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_batch_writes_equal_the_per_user_path(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = CONFIGS[name]
    stores = MemoryStore(), MemoryStore()
    for store in stores:
        stored(store, config)
    bulk, reference = (PartitionWorker(store, 0, config) for store in stores)
    taken = count_paths(monkeypatch)
    target = "feature_store.ingest.batch_state_writes"
    for records in batches(12, 300):
        ours = bulk.process(records)
        monkeypatch.setattr(target, per_user_writes)
        theirs = reference.process(records)
        monkeypatch.setattr(target, state_writes.batch_state_writes)
        assert ours.changelog == theirs.changelog
        assert list(ours.parts) == list(theirs.parts)
        for user, part in ours.parts.items():
            assert part.records == theirs.parts[user].records, user
            assert part.deleted_ranges == theirs.parts[user].deleted_ranges, user
        bulk.commit(ours)
        reference.commit(theirs)
    assert stores[0]._data == stores[1]._data
    assert taken["new"] > 0 and taken["delta"] > 0 and taken["general"] > 0, taken


def count_paths(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often each path of ``batch_state_writes`` ran (a test that took only the general
    path would prove nothing)."""
    taken: Counter[str] = Counter()
    new, delta = state_writes._new_user, state_writes._delta
    general = state_writes.changelog_state_records

    def counted_new(*args: object) -> object:
        taken["new"] += 1
        return new(*args)  # type: ignore[arg-type]

    def counted_delta(*args: object) -> bool:
        done = delta(*args)  # type: ignore[arg-type]
        taken["delta" if done else "general"] += 1
        return done

    def counted_general(user: str, state: UserState) -> Records:
        taken["general"] += 1
        return general(user, state)

    monkeypatch.setattr(state_writes, "_new_user", counted_new)
    monkeypatch.setattr(state_writes, "_delta", counted_delta)
    monkeypatch.setattr(state_writes, "changelog_state_records", counted_general)
    return taken
