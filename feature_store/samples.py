"""Training samples as of just before an event, their binary encoding and batch decoding.

A *sample message* holds one history and one or more targets that share it (a positive and its K
negatives travel together, so the history is sent once):

    header | targets (T rows) | recent behaviours (n rows, oldest first) | clusters (c rows)

with fixed little-endian dtypes (magic ``TS``, format version, counts in the header; recent rows
are the state's own behaviour records, clusters its cluster records). :func:`decode_samples` turns
a list of messages into right-aligned, padded numpy arrays with one row per target, the layout of
``models.Batch`` (the trainer wraps them in tensors and maps raw ids to embedding rows).

Implicit mode: every behaviour in ``positive_types`` is a positive; K negatives are drawn in
proportion to item frequency (:class:`FrequencySampler`), excluding the user's whole lifelong log
and the target. Negatives carry the positive event's dense features, so a feature never reveals
the label. Explicit mode: an impression becomes a pending sample (:class:`PendingImpressions`),
labelled 1 when a click on the same (user, item[, request_id]) follows within the attribution
window, and 0 when the window closes.

>>> from feature_store.state import behaviour_dtype
>>> from feature_store.clustering import cluster_dtype
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

import heapq
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import numpy as np
import numpy.typing as npt

from contracts.schema import Event, EventType
from contracts.settings import RECENT_LENGTH
from feature_store.clustering import cluster_dtype
from feature_store.ids import hash_draws, hash_id, stable_id
from feature_store.state import TYPE_CODES, StateConfig, UserState, behaviour_dtype

SAMPLE_VERSION = 1
SAMPLE_MAGIC = b"TS"
I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]

SAMPLE_HEADER = np.dtype(
    [
        ("magic", "S2"),
        ("version", "u1"),
        ("flags", "u1"),
        ("n_dense", "<u2"),
        ("n_targets", "<u2"),
        ("n_recent", "<u4"),
        ("n_clusters", "<u4"),
        ("user", "<i8"),
        ("ts", "<f8"),
    ]
)


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


@dataclass(frozen=True)
class SampleConfig:
    """How samples are made (DESIGN.md section 4)."""

    mode: Literal["implicit", "explicit"] = "implicit"
    negatives: int = 2  # K
    recent_length: int = RECENT_LENGTH  # L
    attribution_window_s: float = 30 * 60
    positive_types: frozenset[EventType] = frozenset(
        {EventType.CLICK, EventType.CART, EventType.FAV, EventType.BUY}
    )
    attribution_types: frozenset[EventType] = frozenset({EventType.CLICK})
    seed: int = 0

    def __post_init__(self) -> None:
        if self.negatives < 0 or self.recent_length < 1 or self.attribution_window_s <= 0:
            raise ValueError(f"invalid SampleConfig: {self}")


# ---------------------------------------------------------------- encoding


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
    *, user: int, ts: float, targets: np.ndarray, recent: np.ndarray, clusters: np.ndarray
) -> bytes:
    """One sample message (see the module docstring). All parts must share the dense width."""
    n_dense = _width(targets)
    if _width(clusters) != n_dense:
        raise ValueError("targets, recent and clusters must have the same number of dense features")
    return _pack(
        user, ts, targets.shape[0], n_dense, targets.tobytes(), recent,
        (clusters.shape[0], clusters.tobytes()),
    )  # fmt: skip


_HEADER_STRUCT = struct.Struct("<2sBBHHIIqd")  # SAMPLE_HEADER, packed


@lru_cache(maxsize=256)
def _targets_struct(n_targets: int, n_dense: int) -> struct.Struct:
    """``n_targets`` packed rows of :func:`target_dtype` (the per-event fast path)."""
    return struct.Struct("<" + ("qqBf" + "f" * n_dense) * n_targets)


def _pack(
    user: int,
    ts: float,
    n_targets: int,
    n_dense: int,
    targets: bytes,
    recent: np.ndarray,
    clusters: tuple[int, bytes],
) -> bytes:
    """``clusters``: (count, bytes) of a :func:`cluster_dtype` array with ``n_dense`` features."""
    if _width(recent) != n_dense:
        raise ValueError("targets, recent and clusters must have the same number of dense features")
    header = _HEADER_STRUCT.pack(
        SAMPLE_MAGIC, SAMPLE_VERSION, 0, n_dense, n_targets, recent.shape[0], clusters[0],
        user, ts,
    )  # fmt: skip
    return b"".join((header, targets, recent.tobytes(), clusters[1]))


def with_label(blob: bytes, label: float) -> bytes:
    """A copy of a sample message with every target's label set to ``label``."""
    h = _sample_header(blob)
    targets = np.frombuffer(
        blob, target_dtype(int(h["n_dense"])), int(h["n_targets"]), SAMPLE_HEADER.itemsize
    ).copy()
    targets["label"] = label
    start = SAMPLE_HEADER.itemsize
    return blob[:start] + targets.tobytes() + blob[start + targets.nbytes :]


def _width(arr: np.ndarray) -> int:
    shape = arr.dtype["dense"].shape
    return int(shape[0]) if shape else 0


def _sample_header(blob: bytes) -> np.void:
    if len(blob) < SAMPLE_HEADER.itemsize:
        raise ValueError("sample shorter than its header")
    h = np.frombuffer(blob, SAMPLE_HEADER, 1)[0]
    if bytes(h["magic"]) != SAMPLE_MAGIC or int(h["version"]) != SAMPLE_VERSION:
        raise ValueError(f"not a twinstream sample of version {SAMPLE_VERSION}")
    return h


@dataclass(frozen=True)
class _Parts:
    header: np.void
    targets: np.ndarray
    recent: np.ndarray
    clusters: np.ndarray


def _split_sample(blob: bytes) -> _Parts:
    h = _sample_header(blob)
    n_dense, offset = int(h["n_dense"]), SAMPLE_HEADER.itemsize
    arrays = []
    for dtype, count in (
        (target_dtype(n_dense), int(h["n_targets"])),
        (behaviour_dtype(n_dense), int(h["n_recent"])),
        (cluster_dtype(n_dense), int(h["n_clusters"])),
    ):
        arrays.append(np.frombuffer(blob, dtype, count, offset))
        offset += dtype.itemsize * count
    if offset != len(blob):
        raise ValueError(f"sample has {len(blob) - offset} unexpected trailing bytes")
    return _Parts(h, *arrays)


# ---------------------------------------------------------------- decoding


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


# ---------------------------------------------------------------- negatives


class FrequencySampler:
    """Items seen in a partition with their counts; draws items in proportion to frequency.

    The multiset of every occurrence so far is split in two: the counts as of the last *fold*
    (a cumulative array, searched with ``np.searchsorted``) and the occurrences since (a list).
    A draw is a uniform position in that multiset: below the folded total it lands on an item by
    its folded count, above it on one recent occurrence, so every draw uses the exact current
    counts at O(1) per update. The list is folded into the array once it holds ``fold_every``
    occurrences or a sixteenth of the distinct items (amortised O(1)). Draws are counter-based
    hashes of a key (:func:`event_key`); the fold schedule depends only on the sequence of
    observations, and :meth:`encode` keeps both parts, so a replay from persisted state draws
    exactly the same items.

    >>> s = FrequencySampler()
    >>> s.observe_many(np.array([1, 1, 1, 2, 3]), np.array([10, 10, 10, 20, 30]))
    >>> items, cats = s.sample(2, exclude=np.array([1]), key=12345)
    >>> sorted(set(items.tolist()) - {2, 3}), len(items), s.total
    ([], 2, 5)
    """

    MAGIC = b"FSv2"

    def __init__(self, capacity: int = 64, fold_every: int = 1_024) -> None:
        self._index: dict[int, int] = {}
        self._items = np.zeros(capacity, np.int64)
        self._cats = np.zeros(capacity, np.int64)
        self._folded = np.zeros(capacity, np.int64)  # counts as of the last fold
        self._cum = np.zeros(0, np.int64)  # cumsum of _folded[:n] at the last fold
        self._folded_total = 0  # _cum[-1], as a Python int
        self._recent: list[int] = []  # item indices observed since the last fold
        self._n = 0
        self.fold_every = fold_every

    def __len__(self) -> int:
        return self._n

    @property
    def total(self) -> int:
        """Occurrences observed."""
        return self._folded_total + len(self._recent)

    def counts(self) -> I64:
        """The current count of each item, in the order items were first seen."""
        recent = np.bincount(np.array(self._recent, np.int64), minlength=self._n)
        return self._folded[: self._n] + recent

    def observe(self, item: int, category: int) -> None:
        """Count one occurrence of ``item`` (its latest category is kept)."""
        i = self._index.get(item)
        if i is None:
            i = self._add(item)
        self._cats[i] = category
        self._recent.append(i)
        if len(self._recent) >= max(self.fold_every, self._n >> 4):
            self._fold()

    def observe_many(self, items: I64, categories: I64) -> None:
        for item, cat in zip(items.tolist(), categories.tolist(), strict=True):
            self.observe(item, cat)

    def _fold(self) -> None:
        self._folded[: self._n] = self.counts()
        self._cumulate()
        self._recent = []

    def _cumulate(self) -> None:
        """``_cum`` and ``_folded_total`` from the folded counts."""
        self._cum = np.cumsum(self._folded[: self._n])
        self._folded_total = int(self._cum[-1]) if self._n else 0

    def _add(self, item: int) -> int:
        if self._n == self._items.shape[0]:
            self._grow(2 * self._n)
        i, self._n = self._n, self._n + 1
        self._index[item] = i
        self._items[i] = item
        return i

    def _grow(self, capacity: int) -> None:
        pad = capacity - self._items.shape[0]
        self._items, self._cats, self._folded = (
            np.concatenate([a, np.zeros(pad, np.int64)])
            for a in (self._items, self._cats, self._folded)
        )

    def sample(
        self,
        k: int,
        exclude: I64,
        key: int,
        max_rounds: int = 8,
        *,
        exclude_item: int | None = None,
    ) -> tuple[I64, I64]:
        """``k`` items (with their categories) by frequency, none of them in ``exclude`` nor equal
        to ``exclude_item``; fewer when the candidates run out. Repeats across the k draws are
        allowed. Only the drawn items are looked up in ``exclude`` (no copy of it is made)."""
        total = self.total
        if k <= 0 or total == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        banned = _Membership(exclude, exclude_item)
        found: list[int] = []
        for round_ in range(max_rounds):
            draws = self._find(hash_draws(key, k * round_, k, total))
            absent = banned.absent([int(self._items[i]) for i in draws])
            found += [i for i, ok in zip(draws, absent, strict=True) if ok]
            if len(found) >= k:
                break
        idx = found[:k]
        return self._items[idx], self._cats[idx]

    def _find(self, targets: list[int]) -> list[int]:
        """The item index at each position ``t`` of the occurrence multiset."""
        cum, recent, folded = self._cum, self._recent, self._folded_total
        return [
            recent[t - folded] if t >= folded else int(cum.searchsorted(t, side="right"))
            for t in targets
        ]

    def encode(self) -> bytes:
        """Magic, counts, then items, categories and folded counts as int64 blocks, then the
        recent occurrences."""
        n, recent = self._n, np.array(self._recent, "<i8")
        arrays = (self._items[:n], self._cats[:n], self._folded[:n], recent)
        head = self.MAGIC + struct.pack("<qq", n, recent.shape[0])
        return head + b"".join(a.astype("<i8").tobytes() for a in arrays)

    @classmethod
    def decode(cls, blob: bytes) -> FrequencySampler:
        """Inverse of :meth:`encode`; also reads the earlier format (counts only, no magic)."""
        if blob[:4] == cls.MAGIC:
            n, n_recent = struct.unpack_from("<qq", blob, 4)
            cols = np.frombuffer(blob, "<i8", 3 * n + n_recent, 20)
            recent = cols[3 * n :].tolist()
        else:
            (n,) = struct.unpack_from("<q", blob)
            cols, recent = np.frombuffer(blob, "<i8", 3 * n, 8), []
        out = cls(capacity=max(64, n))
        out._items[:n], out._cats[:n], out._folded[:n] = cols[: 3 * n].reshape(3, n)
        out._index = {item: i for i, item in enumerate(out._items[:n].tolist())}
        out._n, out._recent = n, recent
        out._cumulate()
        return out


class _Membership:
    """``value not in pool and value != item`` for the few values of one draw: only those
    values are looked up (a list scan in a small pool, a vectorised comparison in a large
    one), so nothing is copied or hashed per pool element up front."""

    SMALL = 128  # up to this many, a Python list scan beats building arrays

    def __init__(self, pool: I64, item: int | None = None) -> None:
        self.pool, self.item = pool, item

    def absent(self, values: list[int]) -> list[bool]:
        if not self.pool.shape[0]:
            return [v != self.item for v in values]
        if self.pool.shape[0] <= self.SMALL:
            pool = self.pool.tolist()
            return [v != self.item and v not in pool for v in values]
        hits = _member(np.array(values, np.int64), self.pool).tolist()
        return [not hit and v != self.item for v, hit in zip(values, hits, strict=True)]


def _member(values: I64, pool: I64) -> npt.NDArray[np.bool_]:
    """``np.isin`` that stays cheap for a few values against a large pool."""
    if values.shape[0] * pool.shape[0] <= 1 << 22:
        return (values[:, None] == pool[None, :]).any(axis=1)
    return np.isin(values, pool)


def event_key(seed: int, event: Event) -> int:
    """The random key of an event's negatives: a replay of the event draws the same ones."""
    name = event.event_id or f"{event.user_id}|{event.item_id}|{event.ts!r}|{event.type.value}"
    return hash_id(f"{seed}|{name}")


# ---------------------------------------------------------------- the builder


class SampleBuilder:
    """The samples of one partition's events. Call :meth:`samples_for` with the user's state
    *before* applying the event (point-in-time correct), then apply it."""

    def __init__(
        self,
        config: SampleConfig,
        state_config: StateConfig,
        sampler: FrequencySampler | None = None,
        pending: PendingImpressions | None = None,
    ) -> None:
        self.config, self.state_config = config, state_config
        self.sampler = FrequencySampler() if sampler is None else sampler
        window = config.attribution_window_s
        self.pending = PendingImpressions(window) if pending is None else pending

    def samples_for(self, state: UserState, event: Event) -> list[bytes]:
        """Samples completed by ``event`` (implicit: now; explicit: when a label is known)."""
        if self.config.mode == "implicit":
            return self._implicit(state, event)
        if event.type is EventType.IMPRESSION:
            blob = self.encode(state, event, np.zeros(0, np.int64), np.zeros(0, np.int64), np.nan)
            return self.pending.add_impression(
                event.user_id, event.item_id, event.request_id, event.ts, blob
            )
        if event.type in self.config.attribution_types:
            return self.pending.add_click(event.user_id, event.item_id, event.request_id, event.ts)
        return []

    def close_expired(self, now: float) -> list[bytes]:
        """Explicit mode: label 0 the impressions whose attribution window ended before ``now``."""
        return self.pending.close_expired(now)

    def _implicit(self, state: UserState, event: Event) -> list[bytes]:
        if event.type not in self.config.positive_types:
            return []
        item, category = stable_id(event.item_id), stable_id(event.category_id)
        key = event_key(self.config.seed, event)
        neg_items, neg_cats = self.sampler.sample(
            self.config.negatives, state.log["item"], key, exclude_item=item
        )
        blob = self.encode(state, event, neg_items, neg_cats, 1.0)
        self.sampler.observe(item, category)
        return [blob]

    def encode(
        self, state: UserState, event: Event, neg_items: I64, neg_cats: I64, label: float
    ) -> bytes:
        """The event's item (with ``label``) and the negatives (label 0) over the state's
        history as of the event."""
        n_dense, code = self.state_config.n_dense, TYPE_CODES[event.type]
        dense = self.state_config.dense(event).tolist() if n_dense else []
        rows = [(stable_id(event.item_id), stable_id(event.category_id), label)]
        rows += [(i, c, 0.0) for i, c in zip(neg_items.tolist(), neg_cats.tolist(), strict=True)]
        values = [v for item, cat, lab in rows for v in (item, cat, code, lab, *dense)]
        return _pack(
            stable_id(event.user_id),
            event.ts,
            len(rows),
            n_dense,
            _targets_struct(len(rows), n_dense).pack(*values),
            state.recent(self.config.recent_length, as_of=event.ts),
            state.cluster_bytes(),
        )


def request_sample(
    state: UserState,
    *,
    user_id: str,
    ts: float,
    items: Sequence[str],
    categories: Sequence[str],
    recent_length: int = RECENT_LENGTH,
    dense: F32 | None = None,
) -> bytes:
    """A scoring request as an unlabelled sample message (one target per candidate), so the
    scorer decodes it with :func:`decode_samples` exactly as the trainer decodes training data.

    >>> from feature_store.state import StateConfig
    >>> state = UserState.empty(StateConfig())
    >>> blob = request_sample(state, user_id="u", ts=1e9, items=["1", "2"], categories=["0", "0"])
    >>> a = decode_samples([blob], recent_length=4)
    >>> a.target_item.tolist(), np.isnan(a.label).all(), a.hist_mask.any()
    ([1, 2], np.True_, np.False_)
    """
    n = len(items)
    if dense is None:
        dense = np.zeros((n, state.n_dense), np.float32)
    targets = make_targets(
        [stable_id(i) for i in items],
        [stable_id(c) for c in categories],
        labels=np.full(n, np.nan, np.float32),
        types=np.full(n, TYPE_CODES[EventType.IMPRESSION], np.uint8),
        dense=dense,
    )
    return encode_sample(
        user=stable_id(user_id),
        ts=ts,
        targets=targets,
        recent=state.recent(recent_length, as_of=ts),
        clusters=state.clusters(),
    )


# ---------------------------------------------------------------- explicit feedback

LabelFn = Callable[[bytes, float], bytes]


@dataclass(order=True)
class _Pending:
    deadline: float
    seq: int
    ts: float = field(compare=False)
    user: str = field(compare=False)
    item: str = field(compare=False)
    request_id: str | None = field(compare=False)
    blob: bytes | None = field(compare=False)  # None: a click waiting for a late impression

    def matches(self, request_id: str | None) -> bool:
        return request_id is None or self.request_id is None or self.request_id == request_id


_PENDING_HEAD = struct.Struct("<ddqBBHHH")


class PendingImpressions:
    """Impressions waiting for a click, and clicks waiting for an impression that arrives late.

    :meth:`add_impression` and :meth:`add_click` return the samples they complete (label 1) and
    :meth:`close_expired` those whose window closed (label 0). A click at ``c`` attributes to the
    most recent matching impression shown at ``t <= c <= t + window_s`` (last touch); request ids
    must be equal when both sides carry one. The agent calls ``close_expired`` from a timer with
    ``now`` = the partition's event-time watermark minus the allowed lateness, so a late click can
    still land. Every change is journaled (:meth:`drain_changes`) for the next write batch.

    >>> p = PendingImpressions(window_s=1800, labeller=lambda blob, label: blob + b"%d" % label)
    >>> p.add_impression("u", "i", "r1", 100.0, b"S")
    []
    >>> p.add_click("u", "i", "r1", 400.0)
    [b'S1']
    >>> p.add_impression("u", "j", None, 500.0, b"T")
    []
    >>> p.close_expired(2299.0), p.close_expired(2301.0)
    ([], [b'T0'])
    """

    def __init__(self, window_s: float, labeller: LabelFn | None = None, prefix: str = "pending/"):
        self.window_s = window_s
        self.prefix = prefix
        self._label: LabelFn = labeller or with_label
        self._by_key: dict[tuple[str, str], list[_Pending]] = {}
        self._heap: list[_Pending] = []
        self._seq = 0
        self._changes: dict[str, bytes | None] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_key.values())

    def add_impression(
        self, user: str, item: str, request_id: str | None, ts: float, blob: bytes
    ) -> list[bytes]:
        """Hold an impression's sample (label pending) until a click or the window's end."""
        clicks = [
            p
            for p in self._by_key.get((user, item), [])
            if p.blob is None and p.matches(request_id) and ts <= p.ts <= ts + self.window_s
        ]
        if clicks:
            self._remove(min(clicks, key=lambda p: p.ts))
            return [self._label(blob, 1.0)]
        self._push(_Pending(ts + self.window_s, self._next(), ts, user, item, request_id, blob))
        return []

    def add_click(self, user: str, item: str, request_id: str | None, ts: float) -> list[bytes]:
        """Label the matching impression 1, or remember the click for a late impression."""
        shown = [
            p
            for p in self._by_key.get((user, item), [])
            if p.blob is not None and p.matches(request_id) and p.ts <= ts <= p.deadline
        ]
        if not shown:
            self._push(_Pending(ts + self.window_s, self._next(), ts, user, item, request_id, None))
            return []
        best = max(shown, key=lambda p: (p.ts, p.seq))
        self._remove(best)
        assert best.blob is not None
        return [self._label(best.blob, 1.0)]

    def close_expired(self, now: float) -> list[bytes]:
        """Label 0 every impression whose window ended before ``now``; forget old clicks."""
        out = []
        while self._heap and self._heap[0].deadline < now:
            entry = heapq.heappop(self._heap)
            if self._live(entry):
                self._remove(entry)
                if entry.blob is not None:
                    out.append(self._label(entry.blob, 0.0))
        return out

    def drain_changes(self) -> dict[str, bytes | None]:
        """Keys written (bytes) or deleted (``None``) since the last call."""
        changes, self._changes = self._changes, {}
        return changes

    def restore(self, values: Iterable[bytes]) -> None:
        """Rebuild from the persisted values of :meth:`drain_changes`."""
        for value in values:
            entry = _decode_pending(value)
            self._seq = max(self._seq, entry.seq)
            self._push(entry, journal=False)

    def _push(self, entry: _Pending, journal: bool = True) -> None:
        self._by_key.setdefault((entry.user, entry.item), []).append(entry)
        heapq.heappush(self._heap, entry)
        if journal:
            self._changes[self._key(entry)] = _encode_pending(entry)

    def _remove(self, entry: _Pending) -> None:
        """Forget an entry (its heap slot is dropped lazily by :meth:`close_expired`)."""
        bucket = self._by_key[(entry.user, entry.item)]
        bucket.remove(entry)
        if not bucket:
            del self._by_key[(entry.user, entry.item)]
        self._changes[self._key(entry)] = None

    def _live(self, entry: _Pending) -> bool:
        return any(p is entry for p in self._by_key.get((entry.user, entry.item), []))

    def _key(self, entry: _Pending) -> str:
        return f"{self.prefix}{entry.seq:016x}"

    def _next(self) -> int:
        self._seq += 1
        return self._seq


def _encode_pending(p: _Pending) -> bytes:
    user, item, req = p.user.encode(), p.item.encode(), (p.request_id or "").encode()
    flags = (p.blob is None, p.request_id is not None)
    head = _PENDING_HEAD.pack(p.deadline, p.ts, p.seq, *flags, len(user), len(item), len(req))
    return head + user + item + req + (p.blob or b"")


def _decode_pending(value: bytes) -> _Pending:
    deadline, ts, seq, is_click, has_req, nu, ni, nr = _PENDING_HEAD.unpack_from(value)
    at = _PENDING_HEAD.size
    user, item = value[at : at + nu].decode(), value[at + nu : at + nu + ni].decode()
    req = value[at + nu + ni : at + nu + ni + nr].decode() if has_req else None
    blob = None if is_click else bytes(value[at + nu + ni + nr :])
    return _Pending(deadline, seq, ts, user, item, req, blob)
