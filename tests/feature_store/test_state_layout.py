"""A state in the store as parts (head, log chunks, clusters) and on the changelog as deltas and
checkpoints: what an event writes is what it changed, and the state read back, or replayed from
the changelog (also as compaction leaves it), is the one applied in memory, late events,
duplicates and the lifelong cap included, for users of 10k and 100k behaviours too."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest

from feature_store.cluster_config import ClusterConfig
from feature_store.ingest import FeatureConfig, PartitionWorker
from feature_store.state import StateConfig, UserState
from feature_store.state_delta import (
    MIN_CHECKPOINT_BYTES,
    Records,
    apply_record,
    changelog_state_records,
    decode_checkpoint,
    full_size,
)
from feature_store.state_layout import (
    CHUNK_PREFIX,
    CHUNK_ROWS,
    Parts,
    chunk_key,
    cluster_key,
    encode_clusters,
    encode_head,
    head_key,
    inline_fits,
    mark_written,
    ring_key,
    state_parts,
)
from feature_store.store import MemoryStore, RocksDBStore, StateStore
from streaming.changelog import StateReplay
from tests.support.lifelong import (
    applied,
    compacted,
    copy,
    lifelong_state,
    tail_events,
    write_through,
)

CAPPED = FeatureConfig(
    state=StateConfig(lifelong_cap=300, recent_length=50),
    clusters=ClusterConfig(lifelong_cap=300),
)


def worker_run(
    store: StateStore, config: FeatureConfig, users: dict[str, UserState], n: int, batch: int
) -> tuple[dict[str, UserState], Records]:
    """``users`` written as the worker writes them, then ``n`` events each through a worker in
    batches of ``batch`` per user; the in-memory reference states and every changelog record."""
    changelog: Records = []
    for user, state in users.items():
        changelog += write_through(store, user, state)
    reference = {u: copy(s) for u, s in users.items()}
    events = {u: tail_events(u, n, seed=i) for i, u in enumerate(users)}
    worker = PartitionWorker(store, 0, config)
    offset = 0
    for k in range(0, n, batch):
        records = []
        for user in users:
            for e in events[user][k : k + batch]:
                records.append((offset, e))
                offset += 1
        result = worker.process(records)
        worker.commit(result)
        changelog += result.changelog
    for user in users:
        applied(reference[user], events[user], config.state, config.clusters)
    return reference, changelog


def replayed(changelog: Records) -> dict[str, UserState]:
    replay = StateReplay()
    for key, value in changelog:
        replay.apply(key, value)
    assert replay.skipped == 0
    return replay.states


@pytest.mark.parametrize("length", [10_000, 100_000])
def test_long_users_store_and_changelog_equal_the_state_applied_in_memory(
    store: StateStore, length: int
) -> None:
    users = {"long": lifelong_state(length, seed=1), "short": lifelong_state(40, seed=2)}
    reference, changelog = worker_run(store, FeatureConfig(), users, n=120, batch=20)
    for user, want in reference.items():
        got = store.get(user)
        assert got is not None and got.encode() == want.encode()
    replay = replayed(changelog)
    assert {u: s.encode() for u, s in replay.items()} == {
        u: s.encode() for u, s in reference.items()
    }


def stored_chunks(store: StateStore) -> list[bytes]:
    """Every log-chunk key in the store (through each backend's own keys)."""
    if isinstance(store, MemoryStore):
        keys = list(store._data)
    else:
        assert isinstance(store, RocksDBStore)
        keys = [bytes(k) for k in store._db.keys(from_key=CHUNK_PREFIX)]
    return sorted(k for k in keys if k.startswith(CHUNK_PREFIX))


def test_a_capped_log_deletes_the_chunks_it_left_and_replays_exactly(store: StateStore) -> None:
    users = {f"u{i}": lifelong_state(280, seed=i) for i in range(3)}
    reference, changelog = worker_run(store, CAPPED, users, n=400, batch=37)
    for user, want in reference.items():
        got = store.get(user)
        assert got is not None and got.encode() == want.encode() and got.log.shape[0] == 300
    want_chunks = [
        chunk_key(u, c)
        for u, s in reference.items()
        for c in range(s.lo // CHUNK_ROWS, (s.total - 1) // CHUNK_ROWS + 1)
    ]
    assert reference["u0"].lo >= 2 * CHUNK_ROWS  # the cap passed whole chunks
    assert stored_chunks(store) == sorted(want_chunks)
    replay = replayed(compacted(changelog))
    assert {u: s.encode() for u, s in replay.items()} == {
        u: s.encode() for u, s in reference.items()
    }


def test_one_event_of_a_100k_user_writes_its_tail_chunk_and_head_not_its_history() -> None:
    state = lifelong_state(100_000, seed=3)
    state.changes.whole = False
    state.changes.stored_lo, state.changes.stored_clusters = state.lo, state.cluster_state
    (e,) = tail_events("u", 1, seed=4)
    state.apply(e, StateConfig())
    parts = state_parts("u", state)
    chunks = [k for k, _ in parts.records if k.startswith(CHUNK_PREFIX)]
    assert chunks == [chunk_key("u", 100_000 // CHUNK_ROWS)]
    assert parts.size() < 16 * 1024 < full_size(state) // 100


def test_a_late_event_rewrites_the_chunks_from_its_position_on() -> None:
    state = lifelong_state(1_000, seed=5)
    state.changes.whole = False
    state.changes.stored_lo, state.changes.stored_clusters = state.lo, state.cluster_state
    ts = float(state.log["ts"][700]) - 30.0  # between behaviours 699 and 700
    (late,) = tail_events("u", 1, seed=6)
    state.apply(replace(late, ts=ts), StateConfig(allowed_lateness_s=1e5))
    assert state.log["ts"][700] == ts
    chunks = [k for k, _ in state_parts("u", state).records if k.startswith(CHUNK_PREFIX)]
    assert chunks == [chunk_key("u", c) for c in range(700 // CHUNK_ROWS, 1_000 // CHUNK_ROWS + 1)]


def test_a_late_event_inside_a_clustered_block_replays_its_new_clusters() -> None:
    """The block the late event lands in is re-clustered over the same span, often into as
    many clusters: the delta carries it all the same (it used to keep the old clusters of every
    block whose record had not changed)."""
    state, scfg, ccfg = (
        lifelong_state(1_024, seed=5),
        StateConfig(allowed_lateness_s=1e5),
        ClusterConfig(),
    )
    written = changelog_state_records("u", state)
    mark_written(state)
    stored = decode_checkpoint(written[0][1])
    ts = float(state.log["ts"][500]) - 30.0  # inside the second base block
    (late,) = tail_events("u", 1, seed=6)
    before = state.cluster_state.blocks.copy()
    state.apply(replace(late, ts=ts), scfg)
    assert state.maybe_recluster(ccfg)
    assert state.cluster_state.blocks[:2].tobytes() == before[:2].tobytes()  # same records
    ((key, delta),) = changelog_state_records("u", state)
    assert apply_record(stored, key, delta)
    assert stored.encode() == state.encode()


def test_deltas_give_way_to_a_checkpoint_once_they_outweigh_the_state(store: StateStore) -> None:
    users = {"u": lifelong_state(1_000, seed=7)}
    reference, changelog = worker_run(store, FeatureConfig(), users, n=900, batch=1)
    checkpoints = [k for k, v in changelog if k == b"u" and v is not None]
    per_event = sum(len(k) + len(v or b"") for k, v in changelog[1:]) / 900
    assert len(checkpoints) >= 2  # the first write, then at least one more
    assert per_event <= 2 * 1024
    threshold = max(MIN_CHECKPOINT_BYTES, full_size(reference["u"]))
    kept = compacted(changelog)
    assert sum(len(k) + len(v or b"") for k, v in kept) <= 2 * threshold + 4 * 1024
    assert replayed(kept)["u"].encode() == reference["u"].encode()


def test_deltas_replayed_onto_a_stored_state_write_every_part_they_changed(
    store: StateStore,
) -> None:
    """A store behind its changelog (a worker killed between producing and writing) takes the
    deltas after its own version: the head, log chunks and dedupe-ring blocks they changed."""
    users = {f"u{i}": lifelong_state(n, seed=i) for i, n in enumerate((30, 300, 10_000))}
    reference, changelog = worker_run(MemoryStore(), FeatureConfig(), users, n=150, batch=7)
    cut = len(changelog) // 3
    for records in (changelog[:cut], changelog[cut:]):
        replay = StateReplay(store)
        for key, value in records:
            replay.apply(key, value)
        assert replay.skipped == 0
        store.write_batch(replay.take(), {})
    for user, want in reference.items():
        got = store.get(user)
        assert got is not None and got.encode() == want.encode()


def test_a_new_users_first_write_deletes_nothing_a_restored_one_clears_stale_chunks(
    store: StateStore,
) -> None:
    """A user the store has no head for has no part there: its first write lays no range
    deletion (they slowed every later RocksDB read); a state restored from a checkpoint over
    older stored parts still deletes the chunks outside its log."""
    worker = PartitionWorker(store, 0, CAPPED)
    result = worker.process([(i, e) for i, e in enumerate(tail_events("new", 3, seed=1))])
    assert result.parts["new"].deleted_ranges == []
    worker.commit(result)
    assert worker.last_offset == store.last_offset(0) == 2
    write_through(store, "old", lifelong_state(280, seed=2))  # chunks 0..2
    restored = lifelong_state(100, seed=3)  # its checkpoint: chunk 0 only
    restored.changes = replace(restored.changes, whole=True)
    write_through(store, "old", restored)
    assert [k for k in stored_chunks(store) if b"old" in k] == [chunk_key("old", 0)]


def test_small_states_are_one_inline_record_and_read_back_through_every_transition(
    store: StateStore,
) -> None:
    """A small state is one record (its inline head) and reads back equal; one stored as parts
    before inline heads, rewritten inline, leaves none of its parts; a state restored from a
    checkpoint over stored parts clears them; one that outgrows its inline head writes every
    part and reads back equal."""
    config = FeatureConfig()
    worker = PartitionWorker(store, 0, config)
    events = tail_events("small", 200, seed=4)
    result = worker.process([(i, e) for i, e in enumerate(events[:20])])
    assert [k for k, _ in result.parts["small"].records] == [head_key("small")]
    worker.commit(result)
    reference = applied(UserState.empty(config.state), events[:20], config.state, config.clusters)
    got = store.get("small")
    assert got is not None and got.encode() == reference.encode() and got.changes.inline
    result = worker.process([(20 + i, e) for i, e in enumerate(events[20:])])  # outgrows it
    assert inline_fits(reference) and not inline_fits(result.states["small"])
    worker.commit(result)
    applied(reference, events[20:], config.state, config.clusters)
    got = store.get("small")
    assert got is not None and got.encode() == reference.encode() and not got.changes.inline
    old = lifelong_state(40, seed=5, ring=64)
    store.write_batch({"old": parts_before_inline_heads("old", old)}, {})
    loaded = store.get("old")
    assert loaded is not None and loaded.encode() == old.encode() and not loaded.changes.inline
    write_through(store, "old", loaded)  # rewritten inline: its parts deleted
    assert [k for k in stored_keys(store) if b"old" in k] == [head_key("old")]
    got = store.get("old")
    assert got is not None and got.encode() == old.encode()
    restored = lifelong_state(50, seed=6, ring=64)
    write_through(store, "restored", lifelong_state(280, seed=6))  # parts on disk
    restored.changes = replace(restored.changes, whole=True)
    write_through(store, "restored", restored)
    assert [k for k in stored_keys(store) if b"restored" in k] == [head_key("restored")]
    got = store.get("restored")
    assert got is not None and got.encode() == restored.encode()


def stored_keys(store: StateStore) -> list[bytes]:
    if isinstance(store, MemoryStore):
        return sorted(store._data)
    assert isinstance(store, RocksDBStore)
    return [bytes(k) for k in store._db.keys(from_key=b"")]


def parts_before_inline_heads(user: str, state: UserState) -> Parts:
    """A small state's parts as stores written before inline heads hold them."""
    ring, fill, _ = state.ring
    return Parts(
        [
            (head_key(user), encode_head(state)),
            (chunk_key(user, 0), struct.pack("<q", state.lo) + state.log.tobytes()),
            (ring_key(user, 0), ring[:fill].tobytes()),
            (cluster_key(user), encode_clusters(state.cluster_state)),
        ]
    )
