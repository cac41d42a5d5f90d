"""A user state in the store as parts, so that a write costs what changed, not the history.

Keys of one user (``U`` = the user id in UTF-8):

- ``u/U``, the head: counts, watermark, write history (:class:`feature_store.state.Changes`);
  written with every change.
- ``r/<len U>U<block>``, the dedupe ring in blocks of :data:`RING_BLOCK` event-id hashes: an event
  rewrites the block its id went to (1 KiB, not the 8 KiB ring).
- ``l/<len U>U<chunk>``, the lifelong log in chunks of :data:`CHUNK_ROWS` behaviours by absolute
  position (chunk ``c`` holds positions ``[c * CHUNK_ROWS, (c + 1) * CHUNK_ROWS)``; each value
  starts with the position of its first row). An appended behaviour rewrites the tail chunk only;
  a late one the chunks from its position on; chunks the cap pushed out are deleted.
- ``k/U``, the TWIN-V2 cluster state: written only when the clustering changed.

A small state (:func:`inline_fits`: at most ``CHUNK_ROWS`` behaviours ever, a ring of at most
``RING_BLOCK`` ids) is one record instead: its head key, with an inline head (magic ``TWUI``)
followed by its log rows, its ring's ids and its cluster record. Most users of a short-event log
are small, and each RocksDB record costs about a microsecond to insert: a new user writes one
record, not four. A state that outgrows it writes every part once (nothing else of it is on disk:
``Changes.inline``), and the head key then holds a parts head again.

:func:`state_parts` lists the writes of a state (what its :class:`~feature_store.state.Changes`
say changed; everything for a state never written, with the user's other chunks and ring blocks
deleted unless the store is known to hold none of them: a user it has no head for, as
:class:`feature_store.ingest.PartitionWorker` marks them, ``Changes.on_disk`` false; range
deletions left in RocksDB's memtable made every later read slower, up to 1.5 ms a point read),
and :func:`load_states` puts states together again from a multi-get.

>>> chunk_key("u", 3)[:5], CHUNK_ROWS
(b'l/\\x00\\x01u', 128)
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from feature_store.cluster_leaves import cluster_dtype
from feature_store.clustering import BLOCK_DTYPE, ClusterState
from feature_store.state import Changes, UserState
from feature_store.state_format import BlockReader, StateFormatError, behaviour_dtype

CHUNK_ROWS = 128  # behaviours per chunk: 4.6 KiB of rows without dense features
RING_BLOCK = 128  # event-id hashes per block of the dedupe ring: 1 KiB
USER_PREFIX = b"u/"
CHUNK_PREFIX = b"l/"
RING_PREFIX = b"r/"
CLUSTER_PREFIX = b"k/"
HEAD_MAGIC = b"TWUH"
INLINE_MAGIC = b"TWUI"  # a head followed by the whole small state (inline_fits)
HEAD_VERSION = 2
HEAD = struct.Struct("<4sHHHIIIIqdqqq")
_START = struct.Struct("<q")
_USER_LEN = struct.Struct(">H")
_CHUNK = struct.Struct(">Q")
_BLOCK = struct.Struct(">H")
CLUSTER_HEAD = struct.Struct("<qqqII")
Records = list[tuple[bytes, bytes | None]]  # None: delete the key
MultiGet = Callable[[list[bytes]], Sequence[bytes | None]]


@dataclass
class Parts:
    """The writes of one state: records (``None`` deletes) and key ranges to delete first."""

    records: Records = field(default_factory=list)
    deleted_ranges: list[tuple[bytes, bytes]] = field(default_factory=list)

    def size(self) -> int:
        return sum(len(k) + len(v or b"") for k, v in self.records)


def head_key(user: str) -> bytes:
    return USER_PREFIX + _user(user)


def cluster_key(user: str) -> bytes:
    return CLUSTER_PREFIX + _user(user)


def chunk_key(user: str, chunk: int) -> bytes:
    return _chunk_prefix(user) + _CHUNK.pack(chunk)


def _chunk_prefix(user: str, prefix: bytes = CHUNK_PREFIX) -> bytes:
    raw = _user(user)
    return prefix + _USER_LEN.pack(len(raw)) + raw


def ring_key(user: str, block: int) -> bytes:
    return _chunk_prefix(user, RING_PREFIX) + _BLOCK.pack(block)


def _user(user: str) -> bytes:
    return user.encode("utf-8", "surrogatepass")


# --- writing -------------------------------------------------------------------------------------


def inline_fits(state: UserState) -> bool:
    """Whether the state is stored as one inline head (see the module's docstring)."""
    return state.total <= CHUNK_ROWS and state.ring[0].shape[0] <= RING_BLOCK


def state_parts(user: str, state: UserState) -> Parts:
    """The records that bring the stored state up to ``state`` (pure: marks nothing written)."""
    if inline_fits(state):
        return _inline_parts(user, state)
    ch, parts, prefix, pack = state.changes, Parts(), _chunk_prefix(user), _CHUNK.pack
    whole = ch.whole or ch.inline  # an inline state outgrown: every part, none on disk yet
    on_disk = ch.on_disk and not ch.inline
    parts.records.append((head_key(user), encode_head(state)))
    first, last = state.lo // CHUNK_ROWS, (state.total - 1) // CHUNK_ROWS
    if whole:
        if on_disk:  # chunks of an older version may lie outside the log's
            parts.deleted_ranges.append((prefix + pack(0), prefix + pack(max(first, 0))))
            parts.deleted_ranges.append((prefix + pack(last + 1), prefix + pack(2**64 - 1)))
        changed_from = first
    else:
        parts.records += [
            (prefix + pack(c), None) for c in range(ch.stored_lo // CHUNK_ROWS, first)
        ]
        changed_from = last + 1 if ch.log_from is None else max(first, ch.log_from // CHUNK_ROWS)
    if state.total > state.lo:
        parts.records += [
            (prefix + pack(c), _chunk(state, c)) for c in range(changed_from, last + 1)
        ]
    if whole or state.cluster_state is not ch.stored_clusters:
        parts.records.append((cluster_key(user), encode_clusters(state.cluster_state)))
    _ring_parts(user, state, parts, whole, on_disk)
    return parts


def _inline_parts(user: str, state: UserState) -> Parts:
    """A small state's one record; and, where parts of an older version may be on disk (a
    state restored from a checkpoint, or stored as parts before inline heads), their deletion."""
    ch, prefix, ring_prefix = state.changes, _chunk_prefix(user), _chunk_prefix(user, RING_PREFIX)
    parts = Parts([(head_key(user), encode_inline(state))])
    if ch.on_disk and not ch.inline and ch.whole:
        parts.deleted_ranges.append((prefix + _CHUNK.pack(0), prefix + _CHUNK.pack(2**64 - 1)))
        parts.deleted_ranges.append((ring_prefix + _BLOCK.pack(0), ring_prefix + b"\xff\xff\xff"))
        parts.records.append((cluster_key(user), None))
    elif ch.on_disk and not ch.inline:  # a small state stored as parts: chunk 0, block 0
        parts.records += [(prefix + _CHUNK.pack(0), None), (ring_prefix + _BLOCK.pack(0), None)]
        parts.records.append((cluster_key(user), None))
    return parts


def _ring_parts(user: str, state: UserState, parts: Parts, whole: bool, on_disk: bool) -> None:
    """The blocks of the dedupe ring that ids went to since the last write (all of them when it
    grew, was never written, or took more ids than it holds)."""
    ch, (ring, fill, pos) = state.changes, state.ring
    n_blocks, prefix = -(-fill // RING_BLOCK), _chunk_prefix(user, RING_PREFIX)
    if whole or ch.ring_resized or ch.ring_added >= fill:
        blocks: range | set[int] = range(n_blocks)
        if whole and on_disk:
            parts.deleted_ranges.append((prefix + _BLOCK.pack(n_blocks), prefix + b"\xff\xff\xff"))
    else:
        size = ring.shape[0]
        blocks = {((pos - 1 - k) % size) // RING_BLOCK for k in range(ch.ring_added)}
    for b in sorted(blocks):
        ids = ring[b * RING_BLOCK : min((b + 1) * RING_BLOCK, fill)]
        parts.records.append((prefix + _BLOCK.pack(b), ids.tobytes()))


def mark_written(state: UserState) -> None:
    """The state's parts are written: the next write carries only what changes after now."""
    ch = state.changes
    ch.whole, ch.on_disk, ch.log_from, ch.ring_added, ch.ring_resized = False, True, None, 0, False
    ch.stored_lo, ch.stored_clusters, ch.inline = state.lo, state.cluster_state, inline_fits(state)


def _chunk(state: UserState, chunk: int) -> bytes:
    start = max(state.lo, chunk * CHUNK_ROWS)
    end = min(state.total, (chunk + 1) * CHUNK_ROWS)
    rows = state.log[start - state.lo : end - state.lo]
    return _START.pack(start) + rows.tobytes()


def encode_inline(state: UserState) -> bytes:
    """A small state's record: an inline head, its log rows, ring ids and cluster record."""
    ring, fill, _ = state.ring
    head = encode_head(state, INLINE_MAGIC)
    rows = state.log.tobytes()
    return b"".join((head, rows, ring[:fill].tobytes(), encode_clusters(state.cluster_state)))


def encode_head(state: UserState, magic: bytes = HEAD_MAGIC) -> bytes:
    ring, fill, pos = state.ring
    ch, watermark = state.changes, state.watermark
    head = HEAD.pack(
        magic, HEAD_VERSION, state.n_dense, CHUNK_ROWS, state.log.shape[0], ring.shape[0],
        fill, pos, state.total, np.nan if watermark is None else watermark, ch.seq,
        ch.checkpoint_seq, ch.since_checkpoint,
    )  # fmt: skip
    return head


def encode_clusters(cs: ClusterState) -> bytes:
    dirty = -1 if cs.dirty_from is None else cs.dirty_from
    head = CLUSTER_HEAD.pack(cs.version, cs.upto, dirty, cs.blocks.shape[0], cs.clusters.shape[0])
    return head + cs.blocks.tobytes() + cs.clusters.tobytes()


def decode_clusters(blob: bytes, n_dense: int) -> ClusterState:
    version, upto, dirty, n_blocks, n_clusters = CLUSTER_HEAD.unpack_from(blob)
    reader = BlockReader(blob, CLUSTER_HEAD.size)
    blocks = reader.take(BLOCK_DTYPE, n_blocks).copy()
    clusters = reader.take(cluster_dtype(n_dense), n_clusters)
    reader.done()
    return ClusterState(version, upto, None if dirty < 0 else dirty, blocks, clusters)


# --- reading -------------------------------------------------------------------------------------


def load_states(get_many: MultiGet, users: list[str]) -> list[UserState | None]:
    """The users' states (``None``: not stored) from two multi-gets: heads, then chunks and
    clusters."""
    heads = get_many([head_key(u) for u in users])
    wanted: list[bytes] = []
    plans: list[tuple[bytes, tuple, int, int] | None] = []
    for user, blob in zip(users, heads, strict=True):
        if blob is None:
            plans.append(None)
            continue
        h = HEAD.unpack_from(blob)
        if h[0] not in (HEAD_MAGIC, INLINE_MAGIC) or h[1] != HEAD_VERSION:
            raise StateFormatError(f"the stored head of {user!r} is not a known state head")
        if h[0] == INLINE_MAGIC:
            plans.append((blob, h, -1, 0))
            continue
        total, n_log, chunk_rows = h[8], h[4], h[3]
        chunks = (
            range((total - n_log) // chunk_rows, (total - 1) // chunk_rows + 1) if n_log else []
        )
        ring_blocks = range(-(-h[6] // RING_BLOCK))  # the filled part of the ring
        keys = [chunk_key(user, c) for c in chunks] + [ring_key(user, b) for b in ring_blocks]
        keys.append(cluster_key(user))
        plans.append((blob, h, len(wanted), len(keys)))
        wanted += keys
    values = get_many(wanted) if wanted else []
    out: list[UserState | None] = []
    for user, plan in zip(users, plans, strict=True):
        if plan is None:
            out.append(None)
            continue
        blob, h, at, n = plan
        out.append(_inline(blob, h) if at < 0 else _assemble(user, blob, h, values[at : at + n]))
    return out


def _inline(blob: bytes, h: tuple) -> UserState:
    """A small state from its inline head (arrays read-only views of ``blob``)."""
    (_, _, n_dense, _, n_log, ring_size, fill, *_) = h
    reader = BlockReader(blob, HEAD.size)
    log = reader.take(behaviour_dtype(n_dense), n_log)
    ring = np.zeros(ring_size, dtype=np.int64)
    ring[:fill] = reader.take(np.dtype("<i8"), fill)
    cs = decode_clusters(blob[reader.offset :], n_dense)
    return _state(h, log, ring, cs, inline=True)


def _log(chunks: list[bytes], lo: int, total: int, row: np.dtype) -> np.ndarray:
    """The log rows [lo, total) from its chunks, oldest first (read-only: copied on the first
    write). Each chunk holds the rows from its start on, and starts where the one before ends."""
    starts = [_START.unpack_from(chunk)[0] for chunk in chunks]
    ends = [s + (len(c) - _START.size) // row.itemsize for s, c in zip(starts, chunks, strict=True)]
    if starts and (starts[0] > lo or ends[-1] != total or starts[1:] != ends[:-1]):
        raise StateFormatError(
            f"stored chunks {list(zip(starts, ends, strict=True))} do not cover [{lo}, {total})"
        )
    rows = np.frombuffer(b"".join(c[_START.size :] for c in chunks), dtype=row)
    return rows[lo - starts[0] :] if starts else rows


def _assemble(user: str, blob: bytes, h: tuple, values: Sequence[bytes | None]) -> UserState:
    (_, _, n_dense, _, n_log, ring_size, fill, _, total, *_) = h
    if any(v is None for v in values):
        raise StateFormatError(f"a stored part of {user!r} is missing")
    parts = [bytes(v) for v in values if v is not None]
    n_ring = -(-fill // RING_BLOCK)
    chunks, ring_blocks = parts[: len(parts) - 1 - n_ring], parts[len(parts) - 1 - n_ring : -1]
    log = _log(chunks, total - n_log, total, behaviour_dtype(n_dense))
    ring = np.zeros(ring_size, dtype=np.int64)
    ring[:fill] = np.frombuffer(b"".join(ring_blocks), dtype="<i8")
    return _state(h, log, ring, decode_clusters(parts[-1], n_dense), inline=False)


def _state(
    h: tuple, log: np.ndarray, ring: np.ndarray, cs: ClusterState, inline: bool
) -> UserState:
    """A stored state from its head's fields and its decoded arrays."""
    (_, _, _, _, n_log, _, fill, pos, total, watermark, seq, ckpt, since) = h
    lo = total - n_log
    changes = Changes(seq, ckpt, since, False, stored_lo=lo, stored_clusters=cs, inline=inline)
    return UserState(
        log,
        total=total,
        watermark=None if np.isnan(watermark) else watermark,
        ring=ring,
        ring_fill=fill,
        ring_pos=pos,
        cluster_state=cs,
        changes=changes,
    )
