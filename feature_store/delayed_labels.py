"""Delayed labels for explicit feedback: impressions wait for a click or the window's end.

In explicit mode an impression becomes a pending sample (:class:`PendingImpressions`), labelled 1
when a click on the same (user, item[, request_id]) follows within the attribution window, and 0
when the window closes. Pending entries are journaled as key/value changes so they survive a
restart.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from feature_store.sample_format import with_label

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
