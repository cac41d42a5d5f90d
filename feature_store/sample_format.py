"""The sample message: its binary layout, how to write one, and the batch decoder.

A *sample message* holds one history and one or more targets that share it (a positive and its K
negatives travel together, so the history is sent once):

    header | targets (T rows) | recent behaviours (n rows, oldest first) | clusters (c rows)

with fixed little-endian dtypes (magic ``TS``, format version, counts in the header; recent rows
are the state's own behaviour records, clusters its cluster records). :func:`decode_samples` turns
a list of messages into right-aligned, padded numpy arrays with one row per target, the layout of
``models.Batch`` (the trainer wraps them in tensors and maps raw ids to embedding rows).

Version 2 (written since issue 13; version 1 still decodes) adds ``n_singletons`` to the header:
the cluster sequence is the ``c`` clusters sent, then the last ``n_singletons`` recent behaviours
as clusters of one (:func:`feature_store.clustering.singletons`). Those are the behaviours logged
since the user was last clustered, which are also the end of its recent sequence whenever it is
not cut by a late event: a long user's sample no longer carries them twice (up to 127 clusters,
2.5 KiB), and the decoded batch is the same. Header flag ``NARROW`` (with
``SampleConfig.narrow_ids``, off by default): the recent rows and clusters are in the narrow rows
of :mod:`feature_store.sample_narrow` (ids in 4 bytes), about 28% fewer bytes for a long user.

>>> t = make_targets([5, 9], [1, 1], labels=[1.0, 0.0])
>>> recent = np.zeros(2, behaviour_dtype(0)); recent["item"] = [3, 4]; recent["session"] = [7, 8]
>>> no_clusters = np.zeros(0, cluster_dtype(0))
>>> blob = encode_sample(user=42, ts=1.5e9, targets=t, recent=recent, clusters=no_clusters)
>>> a = decode_samples([blob], recent_length=3, max_clusters=2)
>>> a.target_item.tolist(), a.label.tolist(), a.hist_item.tolist()
([5, 9], [1.0, 0.0], [[0, 3, 4], [0, 3, 4]])
>>> a.hist_session.tolist()[0], a.hist_age.tolist()[0], a.hist_mask.tolist()[0]
([0, 0, 1], [0, 1, 0], [False, True, True])
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from contracts.schema import EventType
from contracts.settings import RECENT_LENGTH
from feature_store.cluster_leaves import cluster_dtype
from feature_store.clustering import singletons
from feature_store.sample_narrow import NARROW_MIN_ROWS, narrow, narrow_size, widen
from feature_store.state_format import TYPE_CODES, behaviour_dtype, dense_width

SAMPLE_VERSION = 2  # what is written; 1 still decodes
NARROW = 1  # header flag: recent rows and clusters in narrow rows (feature_store.sample_narrow)
SAMPLE_MAGIC = b"TS"
I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]

_HEADER_FIELDS = [
    ("magic", "S2"),
    ("version", "u1"),
    ("flags", "u1"),
    ("n_dense", "<u2"),
    ("n_targets", "<u2"),
    ("n_recent", "<u4"),
    ("n_clusters", "<u4"),  # the clusters sent (version 2: before the singletons)
    ("user", "<i8"),
    ("ts", "<f8"),
]
SAMPLE_HEADER_V1 = np.dtype(_HEADER_FIELDS)
SAMPLE_HEADER = np.dtype([*_HEADER_FIELDS, ("n_singletons", "<u4")])  # version 2
HEADERS = {1: SAMPLE_HEADER_V1, 2: SAMPLE_HEADER}


def target_dtype(n_dense: int) -> np.dtype:
    """One target row: the candidate item, its category, event type code, label, dense features."""
    return np.dtype(
        [
            ("item", "<i8"),
            ("category", "<i8"),
            ("type", "u1"),
            ("label", "<f4"),  # NaN while an impression's label is pending
            ("dense", "<f4", (n_dense,)),
        ]
    )


def make_targets(
    items: Sequence[int] | I64,
    categories: Sequence[int] | I64,
    *,
    labels: Sequence[float] | F32,
    types: Sequence[int] | npt.NDArray[np.uint8] | None = None,
    dense: F32 | None = None,
) -> np.ndarray:
    """Target rows from columns (``dense``: (T, F) or None for F = 0)."""
    n_dense = 0 if dense is None else int(dense.shape[1])
    out = np.zeros(len(items), dtype=target_dtype(n_dense))
    out["item"], out["category"], out["label"] = items, categories, labels
    out["type"] = TYPE_CODES[EventType.CLICK] if types is None else types
    if dense is not None:
        out["dense"] = dense
    return out


def encode_sample(
    *,
    user: int,
    ts: float,
    targets: np.ndarray,
    recent: np.ndarray,
    clusters: np.ndarray,
    narrow_ids: bool = False,
) -> bytes:
    """One sample message (see the module docstring). All parts must share the dense width."""
    n_dense = dense_width(targets)
    if dense_width(clusters) != n_dense:
        raise ValueError("targets, recent and clusters must have the same number of dense features")
    return pack_sample(
        user, ts, targets.shape[0], n_dense, targets.tobytes(), recent, clusters,
        narrow_ids=narrow_ids,
    )  # fmt: skip


_HEADER_STRUCT = struct.Struct("<2sBBHHIIqdI")  # SAMPLE_HEADER, packed


@lru_cache(maxsize=256)
def targets_struct(n_targets: int, n_dense: int) -> struct.Struct:
    """``n_targets`` packed rows of :func:`target_dtype` (the per-event fast path)."""
    return struct.Struct("<" + ("qqBf" + "f" * n_dense) * n_targets)


def pack_sample(
    user: int,
    ts: float,
    n_targets: int,
    n_dense: int,
    targets: bytes,
    recent: np.ndarray,
    clusters: np.ndarray,
    tail: np.ndarray | None = None,
    tail_ends_recent: bool = False,
    *,
    narrow_ids: bool = False,
) -> bytes:
    """One sample message from parts already in bytes (the sample builder's per-event path):
    ``targets`` are ``n_targets`` packed rows (:func:`targets_struct`), ``clusters`` a
    :func:`cluster_dtype` array with ``n_dense`` features, followed in the cluster sequence by
    the behaviour rows ``tail`` as clusters of one; ``tail_ends_recent``: they are the last rows
    of ``recent``, which then stand for them (``n_singletons``). ``narrow_ids``: a history of
    ``NARROW_MIN_ROWS`` rows or more goes in narrow rows when its ids fit
    (:mod:`feature_store.sample_narrow`)."""
    history = pack_history(
        recent, clusters, tail, tail_ends_recent, n_dense=n_dense, narrow_ids=narrow_ids
    )
    return history.message(user, ts, n_targets, targets)


class PackedHistory(NamedTuple):
    """The history part of a sample message in bytes, and what its header says of it: a
    message for any targets (:meth:`message`), so a batch encodes each history at its event's
    turn and adds the targets once its negatives are drawn."""

    flags: int
    n_dense: int
    n_recent: int
    n_clusters: int
    n_singletons: int
    body: tuple[bytes, bytes]  # recent rows, clusters (wide or narrow)

    def message(self, user: int, ts: float, n_targets: int, targets: bytes) -> bytes:
        """The sample message of ``n_targets`` packed target rows over this history."""
        header = _HEADER_STRUCT.pack(
            SAMPLE_MAGIC, SAMPLE_VERSION, self.flags, self.n_dense, n_targets, self.n_recent,
            self.n_clusters, user, ts, self.n_singletons,
        )  # fmt: skip
        return b"".join((header, targets, *self.body))


def pack_history(
    recent: np.ndarray,
    clusters: np.ndarray,
    tail: np.ndarray | None = None,
    tail_ends_recent: bool = False,
    *,
    n_dense: int,
    narrow_ids: bool = False,
) -> PackedHistory:
    """The history of :func:`pack_sample` in bytes (the same arguments)."""
    if dense_width(recent) != n_dense:
        raise ValueError("targets, recent and clusters must have the same number of dense features")
    n_tail = 0 if tail is None else tail.shape[0]
    singles = n_tail if tail_ends_recent and n_tail <= recent.shape[0] else 0
    if tail is not None and n_tail and not singles:
        clusters = np.concatenate([clusters, singletons(tail, clusters.dtype)])
    flags, history = 0, (recent.tobytes(), clusters.tobytes())
    if narrow_ids and recent.shape[0] + clusters.shape[0] >= NARROW_MIN_ROWS:
        narrowed = narrow(recent, clusters)
        if narrowed is not None:
            flags, history = NARROW, narrowed
    return PackedHistory(flags, n_dense, recent.shape[0], clusters.shape[0], singles, history)


@lru_cache(maxsize=16)
def empty_history(n_dense: int, narrow_ids: bool = False) -> PackedHistory:
    """:func:`pack_history` of no recent rows and no clusters (immutable: shared)."""
    rows, clusters = np.zeros(0, behaviour_dtype(n_dense)), np.zeros(0, cluster_dtype(n_dense))
    return pack_history(rows, clusters, rows, True, n_dense=n_dense, narrow_ids=narrow_ids)


def with_label(blob: bytes, label: float) -> bytes:
    """A copy of a sample message with every target's label set to ``label``."""
    h = _sample_header(blob)
    start = h.dtype.itemsize
    targets = np.frombuffer(blob, target_dtype(int(h["n_dense"])), int(h["n_targets"]), start)
    targets = targets.copy()
    targets["label"] = label
    return blob[:start] + targets.tobytes() + blob[start + targets.nbytes :]


def _sample_header(blob: bytes) -> np.void:
    """The header of a sample message of a known version (its dtype tells which)."""
    version = blob[2] if len(blob) > 2 and blob[:2] == SAMPLE_MAGIC else None
    dtype = HEADERS.get(version) if version is not None else None
    if dtype is None:
        raise ValueError(f"not a twinstream sample of version {sorted(HEADERS)}")
    if len(blob) < dtype.itemsize:
        raise ValueError("sample shorter than its header")
    return np.frombuffer(blob, dtype, 1)[0]


@dataclass(frozen=True)
class _Parts:
    header: np.void
    targets: np.ndarray
    recent: np.ndarray
    clusters: np.ndarray


def _split_sample(blob: bytes) -> _Parts:
    h = _sample_header(blob)
    n_dense, offset = int(h["n_dense"]), h.dtype.itemsize
    n_recent, n_clusters = int(h["n_recent"]), int(h["n_clusters"])
    targets = np.frombuffer(blob, target_dtype(n_dense), int(h["n_targets"]), offset)
    offset += targets.nbytes
    if int(h["flags"]) & NARROW:
        size = narrow_size(n_recent, n_clusters, n_dense)
    else:
        size = n_recent * behaviour_dtype(n_dense).itemsize
        size += n_clusters * cluster_dtype(n_dense).itemsize
    if offset + size != len(blob):
        raise ValueError(f"sample has {len(blob) - offset - size} unexpected trailing bytes")
    if int(h["flags"]) & NARROW:
        recent, clusters = widen(blob, offset, n_recent, n_clusters, n_dense)
    else:
        recent = np.frombuffer(blob, behaviour_dtype(n_dense), n_recent, offset)
        clusters = np.frombuffer(blob, cluster_dtype(n_dense), n_clusters, offset + recent.nbytes)
    singles = int(h["n_singletons"]) if h.dtype == SAMPLE_HEADER else 0
    if singles > recent.shape[0]:
        raise ValueError(f"{singles} singletons from {recent.shape[0]} recent behaviours")
    if singles:
        clusters = np.concatenate([clusters, singletons(recent[-singles:], clusters.dtype)])
    return _Parts(h, targets, recent, clusters)


@dataclass(frozen=True)
class SampleArrays:
    """A decoded batch: B target rows, histories right-aligned to L, clusters to C."""

    user: I64  # (B,) stable user key
    ts: npt.NDArray[np.float64]  # (B,) event time of the sample
    target_item: I64  # (B,)
    target_category: I64  # (B,)
    target_type: npt.NDArray[np.uint8]  # (B,)
    target_dense: F32  # (B, F)
    label: F32  # (B,) NaN = unlabelled
    hist_item: I64  # (B, L), 0 on padding (left)
    hist_category: I64  # (B, L)
    hist_type: npt.NDArray[np.uint8]  # (B, L)
    hist_ts: npt.NDArray[np.float64]  # (B, L)
    hist_session: I64  # (B, L) 0 = oldest session in the window
    hist_age: I64  # (B, L) 0 = most recent behaviour
    hist_dense: F32  # (B, L, F)
    hist_mask: npt.NDArray[np.bool_]  # (B, L)
    cluster_item: I64  # (B, C)
    cluster_category: I64  # (B, C)
    cluster_size: F32  # (B, C), 0 on padding
    cluster_dense: F32  # (B, C, F)
    cluster_mask: npt.NDArray[np.bool_]  # (B, C)

    @property
    def size(self) -> int:
        return int(self.target_item.shape[0])


def decode_samples(
    blobs: Sequence[bytes], recent_length: int = RECENT_LENGTH, max_clusters: int | None = None
) -> SampleArrays:
    """Decode sample messages into one batch (one row per target).

    Histories longer than ``recent_length`` keep their newest part; cluster sequences longer than
    ``max_clusters`` (default: the longest in the batch) keep their newest clusters."""
    parts = [_split_sample(b) for b in blobs]
    widths = {int(p.header["n_dense"]) for p in parts}
    if len(widths) > 1:
        raise ValueError(f"samples with different dense widths in one batch: {sorted(widths)}")
    n_dense = widths.pop() if widths else 0
    recents = [p.recent[-recent_length:] for p in parts]
    n_c = max([p.clusters.shape[0] for p in parts], default=0)
    c_len = n_c if max_clusters is None else max_clusters
    clusters = [p.clusters[p.clusters.shape[0] - min(c_len, p.clusters.shape[0]) :] for p in parts]
    row = np.repeat(np.arange(len(parts)), [int(p.header["n_targets"]) for p in parts])  # (B,)
    targets = _concat([p.targets for p in parts], target_dtype(n_dense))
    hist = _right_align(recents, recent_length, behaviour_dtype(n_dense))
    clus = _right_align(clusters, c_len, cluster_dtype(n_dense))
    h_rec, h_mask = hist[0][row], hist[1][row]
    c_rec, c_mask = clus[0][row], clus[1][row]
    c = np.ascontiguousarray
    return SampleArrays(
        user=np.array([p.header["user"] for p in parts], dtype=np.int64)[row],
        ts=np.array([p.header["ts"] for p in parts], dtype=np.float64)[row],
        target_item=c(targets["item"]),
        target_category=c(targets["category"]),
        target_type=c(targets["type"]),
        target_dense=c(targets["dense"]),
        label=c(targets["label"]),
        hist_item=c(h_rec["item"]),
        hist_category=c(h_rec["category"]),
        hist_type=c(h_rec["type"]),
        hist_ts=c(h_rec["ts"]),
        hist_session=_relative_sessions(h_rec["session"], h_mask),
        hist_age=_ages(h_mask),
        hist_dense=c(h_rec["dense"]),
        hist_mask=h_mask,
        cluster_item=c(c_rec["item"]),
        cluster_category=c(c_rec["category"]),
        cluster_size=c_rec["size"].astype(np.float32),
        cluster_dense=c(c_rec["dense"]),
        cluster_mask=c_mask,
    )


def _concat(arrays: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype)


def _right_align(
    seqs: list[np.ndarray], length: int, dtype: np.dtype
) -> tuple[np.ndarray, npt.NDArray[np.bool_]]:
    """Stack variable-length record arrays into (n, length) with padding on the left."""
    n = np.array([s.shape[0] for s in seqs], dtype=np.int64)
    out = np.zeros((len(seqs), length), dtype=dtype)
    flat = _concat(seqs, dtype)
    rows = np.repeat(np.arange(len(seqs)), n)
    starts = np.repeat(np.cumsum(n) - n, n)
    cols = length - np.repeat(n, n) + (np.arange(flat.shape[0]) - starts)
    out[rows, cols] = flat
    mask = np.arange(length)[None, :] >= (length - n)[:, None]
    return out, mask


def _relative_sessions(session: npt.NDArray[np.uint32], mask: npt.NDArray[np.bool_]) -> I64:
    s = session.astype(np.int64)
    first = np.where(mask, s, np.iinfo(np.int64).max).min(axis=1, keepdims=True)
    return np.where(mask, s - first, 0)


def _ages(mask: npt.NDArray[np.bool_]) -> I64:
    length = mask.shape[1]
    age = np.broadcast_to(np.arange(length - 1, -1, -1, dtype=np.int64), mask.shape)
    return np.where(mask, age, 0)
