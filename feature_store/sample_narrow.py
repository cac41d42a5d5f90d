"""Narrow rows for the histories of sample messages (:mod:`feature_store.sample_format`, flag
``NARROW``): a long user's recent behaviours and clusters in fewer bytes, decoded to exactly the
rows they stand for.

Item and category ids go in 4 bytes instead of 8 when every id of the history is below 2**32 (the
raw numeric ids of Taobao and MovieLens; a hashed id, 2**62 or more, keeps the full rows): a
behaviour row takes 21 bytes instead of 29 (+ 4 per dense feature), a cluster row 12 instead of 20.
The rows are cut and put together again as runs of bytes (a structured view and one copy each
way), not converted field by field.

>>> from feature_store.state_format import behaviour_dtype
>>> from feature_store.cluster_leaves import cluster_dtype
>>> recent = np.zeros(3, behaviour_dtype(0)); recent["item"] = [5, 6, 7]
>>> recent["ts"] = [100.0, 160.0, 220.5]; recent["session"] = [4, 4, 5]
>>> clusters = np.zeros(1, cluster_dtype(0)); clusters["size"] = 9
>>> packed = narrow(recent, clusters)
>>> len(packed[0]) + len(packed[1]), recent.nbytes + clusters.nbytes
(75, 107)
>>> back = widen(packed[0] + packed[1], 0, 3, 1, 0)
>>> back[0].tobytes() == recent.tobytes(), back[1].tobytes() == clusters.tobytes()
(True, True)
>>> recent["item"][1] = 2**62 + 1; narrow(recent, clusters) is None
True
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np

from feature_store.cluster_leaves import cluster_dtype
from feature_store.state_format import behaviour_dtype, dense_width

NARROW_MIN_ROWS = 64  # fewer recent rows and clusters than this: full rows (not worth the CPU)
Layouts = tuple[np.dtype, np.dtype, np.dtype]  # wide view, narrow row, high halves view


def _layouts(dtype: np.dtype) -> Layouts:
    """Of a row ``dtype`` with 8-byte fields item and category: a view of its bytes as runs
    without the high halves of the two ids, the same runs packed (the narrow row), and a view
    of the two high halves as ``u4`` (they must be zero)."""
    fields: Mapping[str, Any] = dtype.fields or {}
    item, category = int(fields["item"][1]), int(fields["category"][1])
    high = {*range(item + 4, item + 8), *range(category + 4, category + 8)}
    keep = [b for b in range(dtype.itemsize) if b not in high]
    runs, start = [], keep[0]
    for before, b in zip(keep, [*keep[1:], -1], strict=True):
        if b != before + 1:
            runs.append((start, before + 1 - start))
            start = b
    names = [f"r{i}" for i in range(len(runs))]
    formats = [f"V{length}" for _, length in runs]
    wide = np.dtype(
        {"names": names, "formats": formats, "offsets": [s for s, _ in runs],
         "itemsize": dtype.itemsize}
    )  # fmt: skip
    packed_offsets = np.cumsum([0] + [length for _, length in runs[:-1]]).tolist()
    narrow_row = np.dtype({"names": names, "formats": formats, "offsets": packed_offsets})
    highs = np.dtype(
        {"names": ["item", "category"], "formats": ["<u4", "<u4"],
         "offsets": [item + 4, category + 4], "itemsize": dtype.itemsize}
    )  # fmt: skip
    return wide, narrow_row, highs


@lru_cache(maxsize=16)
def behaviour_layouts(n_dense: int) -> Layouts:
    return _layouts(behaviour_dtype(n_dense))


@lru_cache(maxsize=16)
def cluster_layouts(n_dense: int) -> Layouts:
    return _layouts(cluster_dtype(n_dense))


def narrow(recent: np.ndarray, clusters: np.ndarray) -> tuple[bytes, bytes] | None:
    """The narrow rows of ``recent`` (behaviours) and ``clusters``; None when an id is 2**32
    or more (see the module docstring)."""
    n_dense = dense_width(recent)
    pairs = ((recent, behaviour_layouts(n_dense)), (clusters, cluster_layouts(n_dense)))
    for rows, (_, _, highs) in pairs:
        high = rows.view(highs)
        if rows.shape[0] and (high["item"] | high["category"]).any():
            return None
    out = [rows.view(wide).astype(narrow_row).tobytes() for rows, (wide, narrow_row, _) in pairs]
    return out[0], out[1]


def widen(
    blob: bytes, at: int, n_recent: int, n_clusters: int, n_dense: int
) -> tuple[np.ndarray, np.ndarray]:
    """The full rows of the narrow recent rows at offset ``at`` of ``blob`` and of the narrow
    cluster rows after them."""
    out = []
    for dtype, (wide, narrow_row, _), n in (
        (behaviour_dtype(n_dense), behaviour_layouts(n_dense), n_recent),
        (cluster_dtype(n_dense), cluster_layouts(n_dense), n_clusters),
    ):
        rows = np.zeros(n, dtype)
        packed = np.frombuffer(blob, narrow_row, n, at)
        rows.view(wide)[:] = packed.astype(wide)
        out.append(rows)
        at += packed.nbytes
    return out[0], out[1]


def narrow_size(n_recent: int, n_clusters: int, n_dense: int) -> int:
    """Bytes of ``n_recent`` narrow behaviour rows and ``n_clusters`` narrow cluster rows."""
    behaviour, cluster = behaviour_layouts(n_dense)[1], cluster_layouts(n_dense)[1]
    return n_recent * behaviour.itemsize + n_clusters * cluster.itemsize
