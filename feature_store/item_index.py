"""Which items a user's lifelong log holds, looked up without scanning the log.

The negative sampler draws a few items per click and keeps those outside the user's history;
comparing each draw with a log of 100,000 behaviours costs ~300 µs per click. :class:`ItemIndex`
is the log's items as a multiset: a sorted array built once, plus the items logged and dropped
(by the lifelong cap) since, counted in dicts; a lookup is a binary search and two dict reads. The
state rebuilds it from the log once the counts since the build pass a sixteenth of the log
(amortised, a sort of the log per n/16 behaviours).

>>> index = ItemIndex(np.array([5, 3, 5], np.int64))
>>> index.add(7); index.drop(np.array([3], np.int64))
>>> index.contains([3, 5, 7, 9])
[False, True, True, False]
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

REBUILD_MIN = 1_024  # changes tolerated before a rebuild, however short the log


class ItemIndex:
    """An exact multiset of item ids: sorted base, then additions and removals since."""

    __slots__ = ("_added", "_base", "_dropped", "changes")

    def __init__(self, items: npt.NDArray[np.int64]) -> None:
        self._base = np.sort(items)
        self._added: dict[int, int] = {}
        self._dropped: dict[int, int] = {}
        self.changes = 0

    def stale(self, n: int) -> bool:
        """Whether a rebuild from a log of ``n`` behaviours is due."""
        return self.changes > max(REBUILD_MIN, n // 16)

    def add(self, item: int) -> None:
        self._added[item] = self._added.get(item, 0) + 1
        self.changes += 1

    def drop(self, items: npt.NDArray[np.int64]) -> None:
        for item in items.tolist():
            self._dropped[item] = self._dropped.get(item, 0) + 1
        self.changes += items.shape[0]

    def contains(self, values: list[int]) -> list[bool]:
        base, added, dropped = self._base, self._added, self._dropped
        at, n = base.searchsorted(values).tolist(), base.shape[0]
        out = []
        for v, i in zip(values, at, strict=True):
            in_base = i < n and base[i] == v
            if v not in added and v not in dropped:
                out.append(bool(in_base))
                continue
            count = (self._count(v, i) if in_base else 0) + added.get(v, 0) - dropped.get(v, 0)
            out.append(count > 0)
        return out

    def _count(self, value: int, first: int) -> int:
        return int(self._base.searchsorted(value, side="right")) - first

    def counts(self, values: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """How many times the multiset holds each of ``values`` (vectorised: two binary searches
        of the base for all of them, the dicts read only for values they hold)."""
        base = self._base
        out = base.searchsorted(values, side="right") - base.searchsorted(values, side="left")
        if self._added or self._dropped:
            added, dropped = self._added, self._dropped
            for i, v in enumerate(values.tolist()):
                if v in added or v in dropped:
                    out[i] += added.get(v, 0) - dropped.get(v, 0)
        return out


class ItemJournal:
    """The items a log gained and lost, in order, while a batch is applied (a state records them
    while :attr:`feature_store.state.UserState.item_journal` is set): with the log's items after
    the batch, they give its items as of any moment in the batch (:func:`counts_as_of`)."""

    __slots__ = ("items", "signs")

    def __init__(self) -> None:
        self.items: list[int] = []
        self.signs: list[int] = []  # +1 gained, -1 lost

    def __len__(self) -> int:
        return len(self.items)

    def gained(self, item: int) -> None:
        self.items.append(item)
        self.signs.append(1)

    def lost(self, items: npt.NDArray[np.int64]) -> None:
        dropped = items.tolist()
        self.items += dropped
        self.signs += [-1] * len(dropped)

    def since(self, values: npt.NDArray[np.int64], starts: npt.NDArray[np.int64]) -> np.ndarray:
        """For each row ``r`` of ``values`` (rows x columns), the net count of each value gained
        from entry ``starts[r]`` of the journal on (what the log held before is final less it)."""
        out = np.zeros(values.shape, np.int64)
        if not self.items:
            return out
        items, signs = np.array(self.items, np.int64), np.array(self.signs, np.int64)
        rows, cols = np.nonzero(np.isin(values, items))  # only values the journal names
        if rows.shape[0]:
            later = np.arange(items.shape[0])[None, :] >= starts[rows][:, None]
            match = (values[rows, cols][:, None] == items[None, :]) & later  # (hits, entries)
            out[rows, cols] = (match * signs).sum(axis=1)
        return out
