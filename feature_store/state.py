"""Per-user state: recent sequence, lifelong log, sessions, dedupe ring, TWIN-V2 clusters.

The lifelong log is one numpy structured array (:func:`behaviour_dtype`), oldest first, capped at
``lifelong_cap`` (the oldest behaviours drop out); the recent sequence is its last ``L`` rows, so
nothing is stored twice. Only the ``history_types`` (click, cart, fav, buy by default) enter the
log; impressions move the user's event-time watermark and the dedupe ring but are no behaviours,
and sessions are computed over behaviours.

Sessions: behaviour i starts a new session when ``ts[i] - ts[i-1] > session_gap_s`` (event time);
``session`` is the absolute session index of the user (0 = the first session ever). A late event
(earlier than the user's watermark, the largest ts applied) within ``allowed_lateness_s`` is
inserted in time order (after behaviours with the same ts) and the session indices from the
insertion point on are recomputed, so the log always equals the offline computation over the sorted
behaviours. Later than that it raises :class:`LateEvent` (reason ``late``, for the DLQ).

Encoding (:mod:`feature_store.state_format`): a fixed header (magic ``TWUS``, format version,
counts) followed by fixed-dtype blocks; :meth:`UserState.decode` uses ``np.frombuffer`` (zero copy;
the log is copied on the first write).

>>> cfg = StateConfig(session_gap_s=1800, allowed_lateness_s=300)
>>> s = UserState.empty(cfg)
>>> for ts in (1000.0, 1100.0, 5000.0):
...     _ = s.apply(Event("u", "7", EventType.CLICK, ts, "3", event_id=f"e{ts}"), cfg)
>>> s.recent(2)["item"].tolist(), s.recent(2)["session"].tolist(), s.session_count
([7, 7], [0, 1], 2)
>>> s.apply(Event("u", "7", EventType.CLICK, 5000.0, "3", event_id="e5000.0"), cfg).value
'duplicate'
>>> UserState.decode(s.encode()).log.tobytes() == s.log.tobytes()
True
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from contracts.schema import Event, EventType, InvalidEvent, Reason
from contracts.settings import ALLOWED_LATENESS_S, LIFELONG_CAP, RECENT_LENGTH, SESSION_GAP_S
from feature_store.cluster_config import ClusterConfig
from feature_store.cluster_leaves import cluster_dtype
from feature_store.clustering import (
    BLOCK_DTYPE,
    ClusterState,
    ItemEmbedder,
    recluster,
    with_singletons,
)
from feature_store.ids import hash_id, stable_id
from feature_store.item_index import ItemIndex, ItemJournal
from feature_store.state_format import (
    FORMAT_VERSION,
    HEADER_STRUCT,
    MAGIC,
    TYPE_CODES,
    Behaviour,
    BlockReader,
    Changes,
    StateFormatError,
    behaviour_dtype,
    copy_rows,
    dense_width,
    read_header,
)

RING_START = 16  # the dedupe ring grows by doubling up to StateConfig.dedupe_window
BEHAVIOUR_TYPES = frozenset({EventType.CLICK, EventType.CART, EventType.FAV, EventType.BUY})


class Admission(StrEnum):
    """What :meth:`UserState.apply` did with an event."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"


class LateEvent(InvalidEvent):
    """An event older than the user's watermark minus the allowed lateness (reason ``late``)."""

    def __init__(self, ts: float, watermark: float, allowed_lateness_s: float) -> None:
        detail = f"ts {ts} is {watermark - ts:.0f}s behind the user's watermark {watermark}"
        super().__init__(Reason.LATE, f"{detail} (allowed {allowed_lateness_s:.0f}s)")
        self.ts, self.watermark = ts, watermark


@dataclass(frozen=True)
class StateConfig:
    """Per-user state knobs (defaults: ARCHITECTURE.md section 3)."""

    recent_length: int = RECENT_LENGTH
    lifelong_cap: int = LIFELONG_CAP
    session_gap_s: float = SESSION_GAP_S
    allowed_lateness_s: float = ALLOWED_LATENESS_S
    dedupe_window: int = 1_024  # event ids remembered per user
    dense_features: tuple[str, ...] = ()  # numeric event features kept per behaviour, in order
    history_types: frozenset[EventType] = BEHAVIOUR_TYPES

    def __post_init__(self) -> None:
        if not 0 < self.recent_length <= self.lifelong_cap:
            raise ValueError("need 0 < recent_length <= lifelong_cap")
        if self.session_gap_s <= 0 or self.allowed_lateness_s < 0 or self.dedupe_window < 1:
            raise ValueError(f"invalid StateConfig: {self}")

    @property
    def n_dense(self) -> int:
        return len(self.dense_features)

    def dense(self, event: Event) -> npt.NDArray[np.float32]:
        """The event's numeric features in ``dense_features`` order (0 when absent or a string)."""
        values = [event.features.get(name, 0.0) for name in self.dense_features]
        return np.array([v if isinstance(v, float) else 0.0 for v in values], dtype=np.float32)


def maybe_seen(events: list[Event], states: dict[str, UserState]) -> list[bool]:
    """For each event of a batch in order, whether its id may be in its user's dedupe ring at its
    turn: in some ring of ``states`` (the batch's users, before the batch) or an id of an earlier
    event of the batch. A ring holds only ids it held before or remembered since, so an event
    without that is no duplicate (:meth:`UserState.check` need not look); one array operation for
    the batch instead of a scan of a ring per event."""
    hashes = [-1 if e.event_id is None else hash_id(e.event_id) for e in events]  # ids >= 0
    rings = [ring[:fill] for ring, fill, _ in (s.ring for s in states.values()) if fill]
    known = np.concatenate(rings) if rings else np.zeros(0, np.int64)
    in_ring = np.isin(np.array(hashes, np.int64), known).tolist()
    out, earlier = [], set()
    for h, hit in zip(hashes, in_ring, strict=True):
        out.append(h != -1 and (hit or h in earlier))
        earlier.add(h)
    return out


@lru_cache(maxsize=16)
def _empty_parts(n_dense: int, dedupe_window: int) -> tuple[np.ndarray, np.ndarray, ClusterState]:
    """The arrays of an empty state, shared and read-only: a state copies them on first write
    (as it does the read-only arrays of a decoded state)."""
    log = np.zeros(0, dtype=behaviour_dtype(n_dense))
    ring = np.zeros(min(RING_START, dedupe_window), dtype=np.int64)
    clusters = np.zeros(0, dtype=cluster_dtype(n_dense))
    blocks = np.zeros(0, dtype=BLOCK_DTYPE)
    for array in (log, ring, clusters, blocks):
        array.flags.writeable = False
    return log, ring, ClusterState(blocks=blocks, clusters=clusters)


class UserState:
    """One user's features. Mutated in place by :meth:`apply`; read by ``recent``/``clusters``."""

    __slots__ = (
        "_buf",
        "_hi",
        "_items",
        "_lo",
        "_ring",
        "_ring_fill",
        "_ring_pos",
        "_total",
        "_watermark",
        "changes",
        "cluster_state",
        "item_journal",
    )

    def __init__(
        self,
        log: np.ndarray,
        *,
        total: int,
        watermark: float | None,
        ring: npt.NDArray[np.int64],
        ring_fill: int,
        ring_pos: int,
        cluster_state: ClusterState,
        changes: Changes | None = None,
    ) -> None:
        self._buf, self._lo, self._hi = log, 0, log.shape[0]
        self._items: ItemIndex | None = None
        self.changes = Changes() if changes is None else changes
        self._total = total
        self._watermark = watermark
        self._ring, self._ring_fill, self._ring_pos = ring, ring_fill, ring_pos
        self.cluster_state = cluster_state
        self.item_journal: ItemJournal | None = None  # set: the log's item changes recorded

    @classmethod
    def empty(cls, config: StateConfig) -> UserState:
        log, ring, cluster_state = _empty_parts(config.n_dense, config.dedupe_window)
        return cls(
            log,
            total=0,
            watermark=None,
            ring=ring,
            ring_fill=0,
            ring_pos=0,
            cluster_state=cluster_state,
        )

    # ------------------------------------------------------------ reads

    @property
    def log(self) -> np.ndarray:
        """The lifelong log (structured, oldest first). Treat as read-only."""
        return self._buf[self._lo : self._hi]

    @property
    def n_dense(self) -> int:
        return dense_width(self._buf)

    @property
    def n_log(self) -> int:
        """Rows in :attr:`log` (without making the view)."""
        return self._hi - self._lo

    @property
    def log_nbytes(self) -> int:
        """Bytes of :attr:`log`'s rows (``log.nbytes`` without making the view)."""
        return self.n_log * self._buf.dtype.itemsize

    @property
    def lo(self) -> int:
        """Absolute position of the log's first behaviour (older ones fell out at the cap)."""
        return self._total - (self._hi - self._lo)

    @property
    def ring(self) -> tuple[npt.NDArray[np.int64], int, int]:
        """The dedupe ring of event-id hashes, how many slots are filled, the next slot."""
        return self._ring, self._ring_fill, self._ring_pos

    @property
    def total(self) -> int:
        """Behaviours ever logged; the log holds absolute positions [total - len(log), total)."""
        return self._total

    @property
    def watermark(self) -> float | None:
        """The largest event time applied (any event type); ``None`` before the first event."""
        return self._watermark

    @property
    def session_count(self) -> int:
        return int(self.log["session"][-1]) + 1 if self._hi > self._lo else 0

    @property
    def session_start(self) -> float | None:
        """Event time of the first behaviour of the current (last) session."""
        sessions = self.log["session"]
        if not sessions.shape[0]:
            return None
        first = int(np.searchsorted(sessions, sessions[-1], side="left"))
        return float(self.log["ts"][first])

    @property
    def last_ts(self) -> float | None:
        """Event time of the most recent behaviour."""
        return float(self._buf["ts"][self._hi - 1]) if self._hi > self._lo else None

    def items(self) -> ItemIndex:
        """The log's items as a multiset (:mod:`feature_store.item_index`), kept up to date."""
        if self._items is None or self._items.stale(self._hi - self._lo):
            self._items = ItemIndex(np.ascontiguousarray(self.log["item"]))
        return self._items

    def position(self, ts: float) -> int:
        """Index in :attr:`log` where a behaviour at ``ts`` goes (after equal timestamps)."""
        return int(np.searchsorted(self.log["ts"], ts, side="right"))

    def recent(self, length: int = 200, as_of: float | None = None) -> np.ndarray:
        """The last ``length`` behaviours with ts <= ``as_of`` (default: all), oldest first."""
        end = self._hi - self._lo
        if as_of is not None and end and as_of < self._buf[self._hi - 1]["ts"]:
            end = self.position(as_of)  # a late event: only what came before it
        return self._buf[max(self._lo, self._lo + end - length) : self._lo + end]

    def clusters(self) -> np.ndarray:
        """The TWIN-V2 cluster sequence (item, category, size, dense), oldest first: the
        clustered part, then the behaviours logged since as clusters of one."""
        return with_singletons(self.cluster_state.clusters, self._unclustered())

    @property
    def cluster_count(self) -> int:
        """The length of :meth:`clusters`, without building it."""
        return self.cluster_state.clusters.shape[0] + self._unclustered().shape[0]

    def sample_history(
        self, length: int, as_of: float | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """What a sample carries, as views (the sample encoder's path): :meth:`recent`, the
        clustered part of :meth:`clusters`, the behaviours logged since (its clusters of one),
        and whether those are the last rows of the recent ones (no late event cut them off)."""
        buf, lo, hi = self._buf, self._lo, self._hi  # one pass of recent() and _unclustered()
        cut = as_of is not None and hi > lo and as_of < float(buf["ts"][hi - 1])
        end = lo + self.position(as_of) if cut and as_of is not None else hi
        recent = buf[max(lo, end - length) : end]
        first = self._total - (hi - lo)  # absolute position of the log's first row
        tail = buf[lo + max(self.cluster_state.upto, first) - first : hi]
        return recent, self.cluster_state.clusters, tail, not cut and tail.size <= recent.size

    def _unclustered(self) -> np.ndarray:
        """The log rows newer than the last re-clustering."""
        lo = self._total - (self._hi - self._lo)
        return self.log[max(self.cluster_state.upto, lo) - lo :]

    def seen(self, event_id: str | None) -> bool:
        """Whether ``event_id`` is among the last ``dedupe_window`` event ids of this user."""
        if event_id is None or not self._ring_fill:
            return False
        return bool((self._ring[: self._ring_fill] == hash_id(event_id)).any())

    # ------------------------------------------------------------ writes

    def check(self, event: Event, config: StateConfig, *, maybe_seen: bool = True) -> Admission:
        """Classify ``event`` without changing anything; raise :class:`LateEvent` when too late.
        ``maybe_seen=False``: the caller knows its id is in no ring (:func:`maybe_seen`)."""
        if maybe_seen and self.seen(event.event_id):
            return Admission.DUPLICATE
        wm = self._watermark
        if wm is not None and event.ts < wm - config.allowed_lateness_s:
            raise LateEvent(event.ts, wm, config.allowed_lateness_s)
        return Admission.APPLIED

    def apply(self, event: Event, config: StateConfig, *, checked: bool = False) -> Admission:
        """Apply one event (deduped, late-checked); behaviours enter the log in time order.
        ``checked``: the caller has just had :attr:`Admission.APPLIED` from :meth:`check`."""
        verdict = Admission.APPLIED if checked else self.check(event, config)
        if verdict is Admission.DUPLICATE:
            return verdict
        self._remember(event.event_id, config.dedupe_window)
        self._watermark = event.ts if self._watermark is None else max(self._watermark, event.ts)
        if event.type in config.history_types:
            self._insert(self._record(event, config), config)
        return verdict

    def maybe_recluster(self, config: ClusterConfig, embedder: ItemEmbedder | None = None) -> bool:
        """Re-cluster when the log grew enough or the embeddings changed (the policy of
        :func:`feature_store.clustering.recluster`); True if it ran."""
        lo = self._total - (self._hi - self._lo)
        new = recluster(self.cluster_state, self.log, lo, config, embedder)
        if new is None:
            return False
        self.cluster_state = new
        return True

    def splice(self, position: int, rows: np.ndarray, total: int, n_log: int) -> None:
        """Replace the log from absolute ``position`` on with ``rows`` (a changelog delta), so
        that it ends at absolute ``total`` and holds ``n_log`` rows (the cap applied)."""
        keep = position - self.lo
        if not 0 <= keep <= self._hi - self._lo or total != position + rows.shape[0]:
            raise StateFormatError(
                f"a delta from {position} does not fit the log [{self.lo}, {total})"
            )
        self._hi = self._lo + keep
        self._reserve(rows.shape[0], max(n_log, 1))
        copy_rows(self._buf[self._hi : self._hi + rows.shape[0]], rows)
        self._hi += rows.shape[0]
        self._total = total
        self._lo = max(self._lo, self._hi - n_log)
        self._items = None
        self.changes.logged(position)

    def set_dedupe(
        self,
        ring: npt.NDArray[np.int64],
        fill: int,
        pos: int,
        watermark: float | None,
        added: int,
    ) -> None:
        """The dedupe ring and watermark as a changelog delta carries them, ``added`` ids new in
        it (marked changed, so that the store writes the ring blocks they went to)."""
        if ring is not self._ring:
            self.changes.ring_resized = True
        self.changes.ring_added += added
        self._ring, self._ring_fill, self._ring_pos, self._watermark = ring, fill, pos, watermark

    def _record(self, event: Event, config: StateConfig) -> Behaviour:
        """The event as a behaviour row (its session index is set on insertion)."""
        if (
            self._buf.dtype is not behaviour_dtype(config.n_dense)
            and config.n_dense != self.n_dense
        ):
            raise StateFormatError(f"state has {self.n_dense} dense features, not {config.n_dense}")
        dense = tuple(config.dense(event).tolist()) if config.n_dense else ()
        item, category = stable_id(event.item_id), stable_id(event.category_id)
        return Behaviour(item, category, event.ts, TYPE_CODES[event.type], 0, dense)

    def _remember(self, event_id: str | None, window: int) -> None:
        if event_id is None:
            return
        size = self._ring.shape[0]
        if self._ring_fill == size < window:  # full but still growing to the window: double it
            ring = np.zeros(min(window, max(RING_START, 2 * size)), dtype=np.int64)
            ring[:size] = self._ring
            self._ring, self._ring_pos = ring, size
            self.changes.ring_resized = True
        elif not self._ring.flags.writeable:
            self._ring = self._ring.copy()
        self.changes.ring_added += 1
        self._ring[self._ring_pos] = hash_id(event_id)
        self._ring_pos = (self._ring_pos + 1) % self._ring.shape[0]
        self._ring_fill = min(self._ring_fill + 1, self._ring.shape[0])

    def _insert(self, rec: Behaviour, config: StateConfig) -> None:
        """Insert in time order, recompute sessions from there on, enforce the cap."""
        session, buf, hi = 0, self._buf, self._hi
        if hi > self._lo:
            last_ts = float(buf["ts"][hi - 1])  # field views: cheaper than the row's
            if rec.ts < last_ts:
                self._insert_late(np.array(rec, dtype=buf.dtype), config)
                return
            # in order (the usual case): the session index follows from the last behaviour
            session = int(buf["session"][hi - 1]) + (rec.ts - last_ts > config.session_gap_s)
        self._reserve(1, config.lifelong_cap)
        self.changes.logged(self._total)
        self._buf[self._hi] = (rec.item, rec.category, rec.ts, rec.type, session, rec.dense)
        self._hi += 1
        self._total += 1
        self._logged(rec.item, config.lifelong_cap)

    def _logged(self, item: int, cap: int) -> None:
        """Keep the item index and the cap after a behaviour entered the log."""
        if self._items is not None:
            self._items.add(item)
        if self.item_journal is not None:
            self.item_journal.gained(item)
        if self._hi - self._lo > cap:
            dropped = self._buf["item"][self._lo : self._hi - cap]
            if self._items is not None:
                self._items.drop(dropped)
            if self.item_journal is not None:
                self.item_journal.lost(dropped)
            self._lo = self._hi - cap

    def _insert_late(self, rec: np.ndarray, config: StateConfig) -> None:
        """Insert before newer behaviours, recompute sessions from there on, enforce the cap."""
        p = self.position(float(rec["ts"]))
        n = self._hi - self._lo
        first_session = int(self._buf["session"][self._lo]) if n else 0
        self._reserve(1, config.lifelong_cap)
        self.changes.logged(self.lo + p)
        buf, at = self._buf, self._lo + p
        copy_rows(buf[at + 1 : self._hi + 1], buf[at : self._hi])
        buf[at] = rec
        self._hi += 1
        self._total += 1
        self._resession(p, first_session, config.session_gap_s)
        if p < n:
            lo_abs = self._total - (self._hi - self._lo)
            self.cluster_state = self.cluster_state.mark_dirty(lo_abs + p)
        self._logged(int(rec["item"]), config.lifelong_cap)

    def _resession(self, p: int, first_session: int, gap_s: float) -> None:
        """Session index of log rows p.. from their predecessors (row 0 gets ``first_session``)."""
        log = self._buf[self._lo : self._hi]
        if p == 0:
            log["session"][0] = first_session
        start = max(p, 1)
        if start < log.shape[0]:
            breaks = np.diff(log["ts"][start - 1 :]) > gap_s
            log["session"][start:] = log["session"][start - 1] + np.cumsum(breaks)

    def _reserve(self, extra: int, cap: int) -> None:
        """Room for ``extra`` rows after the log in a writable buffer (amortised O(1))."""
        if self._buf.flags.writeable and self._hi + extra <= self._buf.shape[0]:
            return
        n = self._hi - self._lo
        size = min(max(16, 2 * (n + extra)), max(n + extra, cap + cap // 4))
        buf = np.zeros(size, dtype=self._buf.dtype)
        if n:  # a new user's first behaviour has nothing to copy
            copy_rows(buf[:n], self._buf[self._lo : self._hi])
        self._buf, self._lo, self._hi = buf, 0, n

    # ------------------------------------------------------------ encoding

    def encode(self) -> bytes:
        """Versioned binary form: header + log + dedupe ring + cluster blocks + clusters."""
        cs = self.cluster_state
        header = HEADER_STRUCT.pack(
            MAGIC, FORMAT_VERSION, self.n_dense, self._hi - self._lo, self._ring.shape[0],
            self._ring_fill, self._ring_pos, self._total,
            np.nan if self._watermark is None else self._watermark,
            cs.version, cs.upto, -1 if cs.dirty_from is None else cs.dirty_from,
            cs.blocks.shape[0], cs.clusters.shape[0],
        )  # fmt: skip
        parts = (self.log, self._ring[: self._ring_fill], cs.blocks, cs.clusters)
        return b"".join((header, *(part.tobytes() for part in parts)))

    @classmethod
    def decode(cls, blob: bytes) -> UserState:
        """Inverse of :meth:`encode`; arrays are read-only views of ``blob`` until written."""
        h = read_header(blob)
        reader = BlockReader(blob, HEADER_STRUCT.size)
        log = reader.take(behaviour_dtype(h.n_dense), h.n_log)
        ring = np.zeros(h.ring_size, dtype=np.int64)
        ring[: h.ring_fill] = reader.take(np.dtype("<i8"), h.ring_fill)
        blocks = reader.take(BLOCK_DTYPE, h.n_blocks)
        clusters = reader.take(cluster_dtype(h.n_dense), h.n_clusters)
        reader.done()
        dirty = None if h.cluster_dirty < 0 else h.cluster_dirty
        cs = ClusterState(h.cluster_version, h.cluster_upto, dirty, blocks.copy(), clusters)
        return cls(
            log,
            total=h.total,
            watermark=None if np.isnan(h.watermark) else h.watermark,
            ring=ring,
            ring_fill=h.ring_fill,
            ring_pos=h.ring_pos,
            cluster_state=cs,
        )
