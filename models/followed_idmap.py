"""A scorer's id map that follows the trainer's deltas in O(changes), not O(ids).

The trainer's :class:`~models.embedding.IdMap` keeps every admitted id in one sorted array
(4 million at the full Taobao vocabulary). A scorer applying a delta every few seconds must not
rebuild that array each time: a rebuild streams hundreds of MB through memory, and requests
scored meanwhile slow down. :class:`FollowedIdMap` keeps the map it was loaded with as its
*base*, never changed, and the changes of the deltas since as a small sorted *overlay* (id → row,
0 where an id lost its row), looked up after the base. The overlay folds into a new base once it
holds more than a fraction of the base (:data:`FOLD_FRACTION`), so lookups stay two binary
searches and a fold is rare.

>>> base = IdMap.for_lookup(IdMap(10), np.array([3, 5, 8]), np.array([1, 2, 3]))
>>> m = FollowedIdMap(base).changed(np.array([5, 9]), np.array([4, 5]), removed=np.array([8]))
>>> m.lookup(np.array([3, 5, 8, 9, 11])).tolist()
[1, 4, 0, 5, 0]
>>> [a.tolist() for a in m.assigned()], len(m)
([[3, 5, 9], [1, 4, 5]], 3)
"""

from __future__ import annotations

import numpy as np
import torch

from models.embedding import IdMap, IdsLike, Int64, _as_int64, _search

FOLD_FRACTION = 1 / 8  # an overlay larger than this share of the base becomes the new base
MIN_FOLD = 65_536  # ... and never before it has this many ids
_EMPTY = np.empty(0, dtype=np.int64)


class FollowedIdMap:
    """An id map that only looks ids up: ``base`` plus the changes since (see the module)."""

    def __init__(self, base: IdMap, keys: Int64 = _EMPTY, rows: Int64 = _EMPTY) -> None:
        self.base, self.keys, self.rows = base, keys, rows  # keys sorted, unique; rows 0: gone
        self.capacity, self.min_count, self.ttl = base.capacity, base.min_count, base.ttl

    def lookup(self, ids: IdsLike) -> torch.Tensor:
        """Rows of ``ids`` (any shape), 0 where not admitted."""
        rows = self.base.lookup(ids)
        if self.keys.size:
            pos, found = _search(self.keys, _as_int64(ids))
            hit = np.flatnonzero(found)
            rows.view(-1)[torch.from_numpy(hit)] = torch.from_numpy(self.rows[pos[hit]])
        return rows

    def changed(self, keys: Int64, rows: Int64, removed: Int64) -> FollowedIdMap:
        """This map with ``keys`` (sorted, unique) at ``rows`` and ``removed`` gone: a new map
        (this one is read by requests meanwhile), in O(overlay + changes)."""
        if np.any(np.diff(keys) <= 0):
            raise ValueError("changed keys must be sorted and unique")
        ids = np.union1d(removed, keys)  # keys win over removed
        values = np.zeros(ids.size, dtype=np.int64)
        values[np.searchsorted(ids, keys)] = rows
        pos, found = _search(self.keys, ids)
        overlay = spliced(self.keys, self.rows, pos[found], ids, values)
        if overlay[0].size > max(MIN_FOLD, FOLD_FRACTION * len(self.base)):
            return FollowedIdMap(IdMap.for_lookup(self.base, *_folded(self.base, *overlay)))
        return FollowedIdMap(self.base, *overlay)

    def assigned(self) -> tuple[Int64, Int64]:
        """Every admitted id and its row, sorted by id (one pass over the base)."""
        return _folded(self.base, self.keys, self.rows)

    def __len__(self) -> int:
        return int(self.assigned()[0].size)


def _folded(base: IdMap, keys: Int64, rows: Int64) -> tuple[Int64, Int64]:
    """The base's ids with the overlay written over them (ids at row 0 left out)."""
    base_keys, base_rows = base.assigned()
    pos, found = _search(base_keys, keys)
    kept = rows > 0
    return spliced(base_keys, base_rows, pos[found], keys[kept], rows[kept])


def spliced(
    keys: Int64, rows: Int64, drop: Int64, new_keys: Int64, new_rows: Int64
) -> tuple[Int64, Int64]:
    """Sorted ``keys`` (and their ``rows``) without the positions ``drop``, with ``new_keys``
    (sorted, none of them a kept key) at their sorted places. The passes over the arrays are
    torch operators, which let go of the GIL while they copy (numpy, and torch's own indexing
    syntax, hold it for milliseconds per pass over millions of ids: a scorer's thread would wait).

    >>> k, r = spliced(np.array([10, 20, 30]), np.array([1, 2, 3]), np.array([1]),
    ...                np.array([5, 20, 40]), np.array([7, 8, 9]))
    >>> k.tolist(), r.tolist()
    ([5, 10, 20, 30, 40], [7, 1, 8, 3, 9])
    """
    drop_at = torch.from_numpy(np.asarray(drop, dtype=np.int64))
    kept = torch.ones(keys.size, dtype=torch.bool).index_fill_(0, drop_at, False)
    old_keys = torch.masked_select(torch.from_numpy(np.asarray(keys, dtype=np.int64)), kept)
    old_rows = torch.masked_select(torch.from_numpy(np.asarray(rows, dtype=np.int64)), kept)
    at = np.searchsorted(old_keys.numpy(), new_keys) + np.arange(new_keys.size)  # in the result
    new_at = torch.from_numpy(at.astype(np.int64))
    slots = torch.ones(old_keys.numel() + new_keys.size, dtype=torch.bool)
    slots.index_fill_(0, new_at, False)  # True where an old key goes
    out_keys = torch.empty(slots.numel(), dtype=torch.int64).masked_scatter_(slots, old_keys)
    out_rows = torch.empty(slots.numel(), dtype=torch.int64).masked_scatter_(slots, old_rows)
    out_keys.index_copy_(0, new_at, torch.from_numpy(np.asarray(new_keys, dtype=np.int64)))
    out_rows.index_copy_(0, new_at, torch.from_numpy(np.asarray(new_rows, dtype=np.int64)))
    return out_keys.numpy(), out_rows.numpy()
