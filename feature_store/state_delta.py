"""A user state on the state changelog: deltas, with a checkpoint once the deltas outweigh it.

A written state goes to the changelog as one of two records (``U`` = the user id in UTF-8):

- a **checkpoint**, key ``U``, value ``b"C"`` + its version + :meth:`UserState.encode` (the whole
  state); compaction keeps the newest per user. Then a tombstone for each delta it covers.
- a **delta**, key ``b"\\xfe"`` + its version (8 bytes, big-endian) + ``U``, value ``b"D"`` + what
  changed since the previous version: the log rows from the first one added or moved (a late
  event moves the rows after it), the counts, the watermark, the event ids new in the dedupe ring
  and, when the clustering changed, the cluster blocks and clusters from the first changed block
  on. One event of a lifelong user costs about 100 bytes of delta, whatever its history.

A state is checkpointed when it was never written (a new user, one restored from a checkpoint) or
once the deltas since its last checkpoint hold more bytes than the whole state
(:func:`wants_checkpoint`): the changelog carries at most about twice what the deltas carry, and
restoring a user reads at most its checkpoint and as many bytes again of deltas.
:func:`apply_record` replays a record onto a state; a delta whose base version is not the state's
(older than the state, or left behind by compaction after its checkpoint) changes nothing.

>>> from contracts.schema import Event, EventType
>>> from feature_store.state import StateConfig, UserState
>>> from feature_store.state_layout import mark_written
>>> cfg, s = StateConfig(), UserState.empty(StateConfig())
>>> _ = s.apply(Event("u", "7", EventType.CLICK, 1e9, "3", event_id="a"), cfg)
>>> first = changelog_state_records("u", s)
>>> mark_written(s); copy = decode_checkpoint(first[0][1])
>>> _ = s.apply(Event("u", "8", EventType.CLICK, 1e9 + 60, "3", event_id="b"), cfg)
>>> (key, delta), = changelog_state_records("u", s)
>>> key[:1], len(delta) < 200, apply_record(copy, key, delta), copy.encode() == s.encode()
(b'\\xfe', True, True, True)
"""

from __future__ import annotations

import struct

import numpy as np

from feature_store.cluster_leaves import cluster_dtype
from feature_store.clustering import BLOCK_DTYPE, ClusterState
from feature_store.state import UserState
from feature_store.state_format import HEADER_STRUCT, Changes, StateFormatError, behaviour_dtype

CHECKPOINT, DELTA = b"C", b"D"
DELTA_PREFIX = b"\xfe"  # never the first byte of UTF-8 text, so never a user id's key
MIN_CHECKPOINT_BYTES = 16 * 1024  # deltas of a small state wait for this much before one
_SEQ = struct.Struct("<q")
_KEY_SEQ = struct.Struct(">Q")
DELTA_HEAD = struct.Struct("<HqdqIIIIII")
CLUSTER_DELTA = struct.Struct("<qqqIIII")
Records = list[tuple[bytes, bytes | None]]


def delta_key(user: str, seq: int) -> bytes:
    return DELTA_PREFIX + _KEY_SEQ.pack(seq) + user.encode("utf-8", "surrogatepass")


def record_user(key: bytes) -> str:
    """The user of a checkpoint or delta key."""
    raw = key[1 + _KEY_SEQ.size :] if key.startswith(DELTA_PREFIX) else key
    return raw.decode("utf-8", "surrogatepass")


def full_size(state: UserState) -> int:
    """The bytes of the state's checkpoint (its :meth:`UserState.encode`)."""
    cs = state.cluster_state
    return (
        HEADER_STRUCT.size
        + state.log_nbytes
        + 8 * state.ring[1]
        + cs.blocks.nbytes
        + cs.clusters.nbytes
    )


def wants_checkpoint(state: UserState) -> bool:
    ch = state.changes
    if ch.whole or ch.stored_clusters is None:
        return True
    if ch.log_from is not None and ch.log_from < state.lo:  # the cap passed a changed row
        return True
    return ch.since_checkpoint >= max(MIN_CHECKPOINT_BYTES, full_size(state))


def changelog_state_records(user: str, state: UserState) -> Records:
    """The changelog records of the state's next version (``state.changes.seq`` + 1, which it
    takes): a delta, or a checkpoint and the tombstones of the deltas it replaces. Call once per
    write, before :func:`feature_store.state_layout.state_parts` (the head keeps the counts)."""
    ch = state.changes
    ch.seq += 1
    if wants_checkpoint(state):
        replaced = range(ch.checkpoint_seq + 1, ch.seq)
        tombstones: Records = [(delta_key(user, s), None) for s in replaced]
        ch.checkpoint_seq, ch.since_checkpoint = ch.seq, 0
        value = CHECKPOINT + _SEQ.pack(ch.seq) + state.encode()
        return [(user.encode("utf-8", "surrogatepass"), value), *tombstones]
    key, value = delta_key(user, ch.seq), DELTA + encode_delta(state)
    ch.since_checkpoint += len(key) + len(value)
    return [(key, value)]


def encode_delta(state: UserState) -> bytes:
    ch, (ring, fill, pos) = state.changes, state.ring
    size = ring.shape[0]
    if ch.ring_resized or ch.ring_added >= fill:
        start, ids = 0, ring[:fill]
    else:
        start = (pos - ch.ring_added) % size
        ids = ring[(start + np.arange(ch.ring_added)) % size]
    log_from = state.total if ch.log_from is None else ch.log_from
    watermark = np.nan if state.watermark is None else state.watermark
    head = DELTA_HEAD.pack(
        state.n_dense, state.total, watermark, log_from, state.log.shape[0], size, fill, pos,
        start, ids.shape[0],
    )  # fmt: skip
    rows = state.log[log_from - state.lo :]
    return head + ids.tobytes() + rows.tobytes() + _cluster_delta(ch, state.cluster_state)


def _cluster_delta(ch: Changes, new: ClusterState) -> bytes:
    """Nothing when unchanged; else the blocks and clusters from the first changed block on."""
    old = ch.stored_clusters
    if old is None or new is old:
        return b""
    keep = _common_blocks(old, new, ch.log_from)
    kept = int(old.blocks["n_clusters"][:keep].sum())
    dirty = -1 if new.dirty_from is None else new.dirty_from
    blocks, clusters = new.blocks[keep:], new.clusters[kept:]
    head = CLUSTER_DELTA.pack(
        new.version, new.upto, dirty, keep, kept, blocks.shape[0], clusters.shape[0]
    )
    return head + blocks.tobytes() + clusters.tobytes()


def _common_blocks(old: ClusterState, new: ClusterState, moved_from: int | None) -> int:
    """How many leading blocks (and so their clusters) the two cluster states share: equal
    records that end before ``moved_from``, the first log row added or moved since (a late event
    re-clusters the blocks after it into blocks that may keep the same span and count)."""
    if old.version != new.version or int(old.blocks["n_clusters"].sum()) != old.clusters.shape[0]:
        return 0
    n = min(old.blocks.shape[0], new.blocks.shape[0])
    if moved_from is not None:
        n = min(n, int(np.searchsorted(new.blocks["end"], moved_from, side="right")))
    same = old.blocks[:n].tobytes() == new.blocks[:n].tobytes()
    if same:
        return n
    row = np.dtype((np.void, BLOCK_DTYPE.itemsize))
    differ = old.blocks[:n].view(row) != new.blocks[:n].view(row)
    return int(np.argmax(differ))


# --- replay --------------------------------------------------------------------------------------


def decode_checkpoint(value: bytes) -> UserState:
    if value[:1] != CHECKPOINT:
        raise StateFormatError("not a state checkpoint")
    (seq,) = _SEQ.unpack_from(value, 1)
    state = UserState.decode(value[1 + _SEQ.size :])
    state.changes = Changes(seq=seq, checkpoint_seq=seq, since_checkpoint=0, whole=True)
    return state


def delta_seq(key: bytes) -> int:
    return int(_KEY_SEQ.unpack_from(key, 1)[0])


def apply_record(state: UserState | None, key: bytes, value: bytes) -> bool:
    """Replay a delta onto ``state`` in place; False (nothing changed) when it does not follow
    the state's version. A checkpoint is read with :func:`decode_checkpoint` instead."""
    if state is None or delta_seq(key) != state.changes.seq + 1:
        return False
    if value[:1] != DELTA:
        raise StateFormatError("not a state delta")
    h = DELTA_HEAD.unpack_from(value, 1)
    n_dense, total, watermark, log_from, n_log, size, fill, pos, start, k = h
    at = 1 + DELTA_HEAD.size
    ids = np.frombuffer(value, dtype="<i8", count=k, offset=at)
    at += 8 * k
    row = behaviour_dtype(n_dense)
    rows = np.frombuffer(value, dtype=row, count=total - log_from, offset=at)
    at += rows.nbytes
    ring, _, _ = state.ring
    if k == fill:  # the whole ring (it grew, or every id in it is new)
        ring = np.zeros(size, dtype=np.int64)
    elif ring.shape[0] != size:
        raise StateFormatError(f"a delta for a dedupe ring of {size}, not {ring.shape[0]}")
    elif not ring.flags.writeable:
        ring = ring.copy()
    ring[(start + np.arange(k)) % size] = ids
    state.set_dedupe(ring, fill, pos, None if np.isnan(watermark) else watermark, k)
    state.splice(log_from, rows, total, n_log)
    if at < len(value):
        state.cluster_state = _apply_clusters(state.cluster_state, value, at, n_dense)
    state.changes.seq += 1
    state.changes.since_checkpoint += len(key) + len(value)
    return True


def _apply_clusters(old: ClusterState, value: bytes, at: int, n_dense: int) -> ClusterState:
    version, upto, dirty, keep, kept, n_blocks, n_clusters = CLUSTER_DELTA.unpack_from(value, at)
    at += CLUSTER_DELTA.size
    blocks = np.frombuffer(value, dtype=BLOCK_DTYPE, count=n_blocks, offset=at)
    at += blocks.nbytes
    clusters = np.frombuffer(value, dtype=cluster_dtype(n_dense), count=n_clusters, offset=at)
    if at + clusters.nbytes != len(value):
        raise StateFormatError("a state delta with trailing bytes")
    return ClusterState(
        version,
        upto,
        None if dirty < 0 else dirty,
        np.concatenate([old.blocks[:keep], blocks]),
        np.concatenate([old.clusters[:kept], clusters]),
    )
