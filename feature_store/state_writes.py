"""A batch's state writes in one pass: every changed user's changelog records and store parts.

:class:`feature_store.ingest.PartitionWorker` writes, for each user a batch changed, its next
changelog record (:func:`feature_store.state_delta.changelog_state_records`), the store's parts
(:func:`feature_store.state_layout.state_parts`), and marks it written. On a log where most users
have one or two events (``taobao_stream``: 66,454 users in 110,300 events) that per-user work is
paid per event, so :func:`batch_state_writes` does it for the whole batch, with the two usual
cases done without the general functions' machinery:

- **a new user** (never written, nothing of it on disk: ``Changes.whole`` and not ``on_disk``):
  its checkpoint and every part encoded once, from one read of its fields; the log bytes are
  encoded once for the checkpoint and its chunk, the cluster bytes once for the checkpoint and the
  cluster record;
- **a delta** (a stored user that logged in order, at most one ring block wrapped, clusters
  unchanged, no checkpoint due): the delta, the head, the tail chunks and the ring blocks.

Anything else (late events, the cap passing a chunk, a ring that grew or wrapped past what it
holds, re-clustering, a checkpoint due) goes through the general functions. The output equals the
general path's byte for byte, record for record (``tests/feature_store/test_state_writes.py``).
"""

from __future__ import annotations

import struct

import numpy as np

from feature_store.state import UserState
from feature_store.state_delta import (
    CHECKPOINT,
    DELTA,
    DELTA_HEAD,
    DELTA_PREFIX,
    MIN_CHECKPOINT_BYTES,
    Records,
    changelog_state_records,
    wants_checkpoint,
)
from feature_store.state_format import FORMAT_VERSION, HEADER_STRUCT, MAGIC, dense_width
from feature_store.state_layout import (
    CHUNK_PREFIX,
    CHUNK_ROWS,
    CLUSTER_HEAD,
    CLUSTER_PREFIX,
    HEAD,
    HEAD_MAGIC,
    HEAD_VERSION,
    INLINE_MAGIC,
    RING_BLOCK,
    RING_PREFIX,
    USER_PREFIX,
    Parts,
    encode_clusters,
    mark_written,
    state_parts,
)

# the layouts of state_layout's _START, _USER_LEN, _CHUNK, _BLOCK and state_delta's _SEQ, _KEY_SEQ
_START_PACK = _SEQ_PACK = struct.Struct("<q").pack
_KEY_SEQ_PACK = _CHUNK_PACK = struct.Struct(">Q").pack
_USER_LEN_PACK = struct.Struct(">H").pack
_BLOCK_PACK = struct.Struct(">H").pack


def batch_state_writes(states: dict[str, UserState]) -> tuple[Records, dict[str, Parts]]:
    """The changelog records and store parts of ``states`` (the users a batch changed, in its
    order), each marked written: what ``changelog_state_records``, ``state_parts`` and
    ``mark_written`` give user by user."""
    changelog: Records = []
    parts: dict[str, Parts] = {}
    for user, state in states.items():
        ch = state.changes
        if ch.whole and not ch.on_disk and ch.seq == ch.checkpoint_seq:
            changelog.append(_new_user(user, state, parts))
        elif ch.whole or not _delta(user, state, changelog, parts):
            changelog += changelog_state_records(user, state)
            parts[user] = state_parts(user, state)
        mark_written(state)
    return changelog, parts


def _new_user(user: str, state: UserState, out: dict[str, Parts]) -> tuple[bytes, bytes]:
    """A state never written with nothing of it on disk: its checkpoint record (version
    ``seq + 1``) and, in ``out``, its head, chunks, cluster record and ring blocks."""
    ch, cs, log = state.changes, state.cluster_state, state.log
    ring, fill, pos = state.ring
    n_log, total, n_dense = log.shape[0], state.total, dense_width(log)
    lo, watermark = total - n_log, state.watermark
    wm = np.nan if watermark is None else watermark
    ch.seq += 1
    seq = ch.checkpoint_seq = ch.seq
    ch.since_checkpoint = 0
    log_bytes, ring_bytes = log.tobytes(), ring[:fill].tobytes()
    cluster_bytes = cs.blocks.tobytes() + cs.clusters.tobytes()
    n_blocks, n_clusters = cs.blocks.shape[0], cs.clusters.shape[0]
    dirty = -1 if cs.dirty_from is None else cs.dirty_from
    header = HEADER_STRUCT.pack(
        MAGIC, FORMAT_VERSION, n_dense, n_log, ring.shape[0], fill, pos, total, wm,
        cs.version, cs.upto, dirty, n_blocks, n_clusters,
    )  # fmt: skip
    raw = user.encode("utf-8", "surrogatepass")
    value = b"".join((CHECKPOINT, _SEQ_PACK(seq), header, log_bytes, ring_bytes, cluster_bytes))
    fits = total <= CHUNK_ROWS and ring.shape[0] <= RING_BLOCK  # state_layout.inline_fits
    head = HEAD.pack(
        INLINE_MAGIC if fits else HEAD_MAGIC, HEAD_VERSION, n_dense, CHUNK_ROWS, n_log,
        ring.shape[0], fill, pos, total, wm, seq, seq, 0,
    )  # fmt: skip
    cluster_head = CLUSTER_HEAD.pack(cs.version, cs.upto, dirty, n_blocks, n_clusters)
    if fits:
        inline = b"".join((head, log_bytes, ring_bytes, cluster_head, cluster_bytes))
        out[user] = Parts([(USER_PREFIX + raw, inline)])
        return raw, value
    prefix = _USER_LEN_PACK(len(raw)) + raw
    records: Records = [(USER_PREFIX + raw, head)]
    if n_log:
        first, last = lo // CHUNK_ROWS, (total - 1) // CHUNK_ROWS
        if first == last:
            records.append(
                (CHUNK_PREFIX + prefix + _CHUNK_PACK(first), _START_PACK(lo) + log_bytes)
            )
        else:
            records += _chunks(CHUNK_PREFIX + prefix, log, lo, total, first, last)
    records.append((CLUSTER_PREFIX + raw, cluster_head + cluster_bytes))
    ring_prefix = RING_PREFIX + prefix
    if fill <= RING_BLOCK:
        if fill:
            records.append((ring_prefix + _BLOCK_PACK(0), ring_bytes))
    else:
        records += [
            (
                ring_prefix + _BLOCK_PACK(b),
                ring[b * RING_BLOCK : min((b + 1) * RING_BLOCK, fill)].tobytes(),
            )
            for b in range(-(-fill // RING_BLOCK))
        ]
    out[user] = Parts(records)
    return raw, value


def _chunks(prefix: bytes, log: np.ndarray, lo: int, total: int, first: int, last: int) -> Records:
    """The chunk records ``first..last`` of a log holding absolute positions [lo, total)."""
    out: Records = []
    for c in range(first, last + 1):
        start, end = max(lo, c * CHUNK_ROWS), min(total, (c + 1) * CHUNK_ROWS)
        out.append(
            (prefix + _CHUNK_PACK(c), _START_PACK(start) + log[start - lo : end - lo].tobytes())
        )
    return out


def _delta(user: str, state: UserState, changelog: Records, out: dict[str, Parts]) -> bool:
    """A stored state's delta and parts, when it is the usual case (see the module's
    docstring); False, nothing done, otherwise."""
    ch, log = state.changes, state.log
    ring, fill, pos = state.ring
    n_log, total, size = log.shape[0], state.total, ring.shape[0]
    lo, added = total - n_log, ch.ring_added
    first, last = lo // CHUNK_ROWS, (total - 1) // CHUNK_ROWS
    fits = total <= CHUNK_ROWS and size <= RING_BLOCK  # state_layout.inline_fits
    if (
        fits != ch.inline  # stored as parts while small (before inline heads), or outgrown
        or state.cluster_state is not ch.stored_clusters
        or ch.ring_resized
        or added >= fill
        or (ch.log_from is not None and ch.log_from < lo)
        or ch.stored_lo // CHUNK_ROWS != first
        or (ch.since_checkpoint >= MIN_CHECKPOINT_BYTES and wants_checkpoint(state))
    ):
        return False
    n_dense, watermark = dense_width(log), state.watermark
    wm = np.nan if watermark is None else watermark
    start = (pos - added) % size
    ids = ring[start : start + added] if start + added <= size else _wrapped(ring, start, added)
    log_from = total if ch.log_from is None else ch.log_from
    ch.seq += 1
    raw = user.encode("utf-8", "surrogatepass")
    key = DELTA_PREFIX + _KEY_SEQ_PACK(ch.seq) + raw
    value = b"".join(
        (
            DELTA,
            DELTA_HEAD.pack(n_dense, total, wm, log_from, n_log, size, fill, pos, start, added),
            ids.tobytes(),
            log[log_from - lo :].tobytes(),
        )
    )
    ch.since_checkpoint += len(key) + len(value)
    changelog.append((key, value))
    head = HEAD.pack(
        INLINE_MAGIC if fits else HEAD_MAGIC, HEAD_VERSION, n_dense, CHUNK_ROWS, n_log, size,
        fill, pos, total, wm, ch.seq, ch.checkpoint_seq, ch.since_checkpoint,
    )  # fmt: skip
    if fits:
        rows, ring_ids = log.tobytes(), ring[:fill].tobytes()
        inline = b"".join((head, rows, ring_ids, encode_clusters(state.cluster_state)))
        out[user] = Parts([(USER_PREFIX + raw, inline)])
        return True
    prefix = _USER_LEN_PACK(len(raw)) + raw
    records: Records = [(USER_PREFIX + raw, head)]
    if n_log and ch.log_from is not None:
        changed_from = max(first, ch.log_from // CHUNK_ROWS)
        records += _chunks(CHUNK_PREFIX + prefix, log, lo, total, changed_from, last)
    ring_prefix = RING_PREFIX + prefix
    blocks = {((pos - 1 - k) % size) // RING_BLOCK for k in range(added)}
    for b in sorted(blocks):
        block = ring[b * RING_BLOCK : min((b + 1) * RING_BLOCK, fill)].tobytes()
        records.append((ring_prefix + _BLOCK_PACK(b), block))
    out[user] = Parts(records)
    return True


def _wrapped(ring: np.ndarray, start: int, added: int) -> np.ndarray:
    return ring[(start + np.arange(added)) % ring.shape[0]]
