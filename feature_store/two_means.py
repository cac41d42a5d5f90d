"""Recursive clamped 2-means over one block's rows, compiled (numba): the leaves of
:func:`feature_store.cluster_leaves.split_leaves`.

A block of a long history is split thousands of times, mostly into nodes of a few dozen rows
(at 10,000 behaviours, 77% of the splits have at most 80 rows). In numpy each split cost about
25 numpy calls and a gather of its rows, 24-28 µs however small the node; here the whole tree is
one compiled call that partitions an index array in place, so a small split costs its arithmetic.

The algorithm is the one ``cluster_leaves`` documents: per node, farthest-point initialisation
(``c0`` farthest from the mean, ``c1`` farthest from ``c0``), at most ``iters`` Lloyd updates
(stopping early once the sides repeat or one side is empty), the sides split by the projection on
``c1 - c0`` at the midpoint, then the clamp: when a side would keep fewer than
``ceil(min_fraction * m)`` rows, the ``k`` rows of largest projection (stable order) form the
second side. Sums run in float32 with re-association allowed (``fastmath`` reassoc and contract:
vectorised dot products, as BLAS does), so a projection may differ from numpy's in its last bits:
deterministic on one machine, equal to the numpy formulation except where a row sits on a
midpoint to within rounding.

>>> x = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)  # 3 tight groups of 4
>>> order, sizes = split_tree(x, 4, 0.25, 2)
>>> sorted(sorted(leaf.tolist()) for leaf in np.split(order, np.cumsum(sizes)[:-1]))
[[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
BOOL = npt.NDArray[np.bool_]

_FAST = {"reassoc", "contract"}  # vectorised sums; no assumptions about NaN or infinities


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def split_tree(x: F32, cap: int, min_fraction: float, iters: int) -> tuple[I64, I64]:
    """Leaves of the rows of ``x`` (n, d), float32 C-contiguous: (members of every leaf one
    after another, each leaf's rows ascending; the size of each leaf), leaves in the order a
    depth-first split visits them (the side below the midpoint first)."""
    n, d = x.shape
    half_sq = np.empty(n, np.float32)
    for i in range(n):
        half_sq[i] = 0.5 * _dot(x[i], x[i])
    perm = np.arange(n)  # every node is a segment of it
    order, sizes = np.empty(n, np.int64), np.empty(n, np.int64)
    scratch = _scratch(n, d)
    stack_lo, stack_hi = np.empty(n + 1, np.int64), np.empty(n + 1, np.int64)
    stack_lo[0], stack_hi[0], depth, filled, leaves = 0, n, 1, 0, 0
    while depth:
        depth -= 1
        lo, hi = stack_lo[depth], stack_hi[depth]
        if hi - lo <= cap:
            if hi > lo:
                order[filled : filled + hi - lo] = perm[lo:hi]
                sizes[leaves], filled, leaves = hi - lo, filled + hi - lo, leaves + 1
            continue
        rows = perm[lo:hi]
        side, n1 = _split(x, half_sq, rows, min_fraction, iters, scratch)
        _partition(rows, side, n1, scratch.rows)
        stack_lo[depth], stack_hi[depth] = lo, lo + n1  # the side above the midpoint
        stack_lo[depth + 1], stack_hi[depth + 1] = lo + n1, hi  # below it: visited first
        depth += 2
    return order, sizes[:leaves]


class _Scratch(NamedTuple):
    """Buffers for one tree's splits, allocated once (sized for the root)."""

    total: F32  # (d,) sum of the node's rows
    s1: F32  # (d,) sum of its second side
    c0: F32  # (d,) centroids
    c1: F32
    proj: F32  # (n,) projections of the node's rows
    side: BOOL  # (n,) this iteration's sides
    last: BOOL  # (n,) the previous iteration's
    rows: I64  # (n,) partition buffer


@numba.njit(cache=True, nogil=True)
def _scratch(n: int, d: int) -> _Scratch:
    f32, flags = np.float32, np.bool_
    return _Scratch(
        np.empty(d, f32), np.empty(d, f32), np.empty(d, f32), np.empty(d, f32),
        np.empty(n, f32), np.empty(n, flags), np.empty(n, flags), np.empty(n, np.int64),
    )  # fmt: skip


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _split(
    x: F32, half_sq: F32, rows: I64, min_fraction: float, iters: int, s: _Scratch
) -> tuple[BOOL, int]:
    """The clamped 2-means sides of ``x[rows]`` (True for the second side) and the second
    side's size."""
    m = rows.shape[0]
    proj, side, threshold = s.proj[:m], s.side[:m], _two_means(x, half_sq, rows, iters, s)
    n1 = 0
    for i in range(m):
        side[i] = proj[i] > threshold
        n1 += side[i]
    low = int(np.ceil(min_fraction * m))
    if low <= n1 <= m - low:
        return side, n1
    k = min(max(n1, low), m - low)
    side[:] = False
    side[np.argsort(proj, kind="mergesort")[m - k :]] = True
    return side, k


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _two_means(x: F32, half_sq: F32, rows: I64, iters: int, s: _Scratch) -> np.float32:
    """Fills ``s.proj[:m]`` with the rows' projections on the final ``c1 - c0`` and returns the
    midpoint threshold (above it: nearer ``c1``)."""
    m = rows.shape[0]
    total, c0, c1, s1 = s.total, s.c0, s.c1, s.s1
    proj, side, last = s.proj[:m], s.side[:m], s.last[:m]
    total[:] = 0.0
    for i in range(m):
        total += x[rows[i]]
    c0[:] = x[rows[_farthest(x, half_sq, rows, total / np.float32(m))]]
    c1[:] = x[rows[_farthest(x, half_sq, rows, c0)]]
    threshold, repeated = np.float32(0.0), False
    for iteration in range(iters + 1):
        axis = c1 - c0
        for i in range(m):
            proj[i] = _dot(x[rows[i]], axis)
        threshold = np.float32(0.5) * _dot(axis, c1 + c0)  # compared in float32, as numpy does
        if iteration == iters:
            break
        n1, same = 0, True
        s1[:] = 0.0
        for i in range(m):
            now = proj[i] > threshold
            same &= now == last[i]
            side[i] = now
            if now:
                n1 += 1
                s1 += x[rows[i]]
        if (repeated and same) or n1 == 0 or n1 == m:
            break  # converged (the same centroids again), or one side empty
        c0[:] = (total - s1) / np.float32(m - n1)
        c1[:] = s1 / np.float32(n1)
        last[:] = side
        repeated = True
    return threshold


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _farthest(x: F32, half_sq: F32, rows: I64, c: F32) -> int:
    """Index into ``rows`` of the row farthest from ``c`` (largest |x|²/2 - x·c; first on ties)."""
    best, at = -np.inf, 0
    for i in range(rows.shape[0]):
        score = half_sq[rows[i]] - _dot(x[rows[i]], c)
        if score > best:
            best, at = score, i
    return at


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _partition(rows: I64, side: BOOL, n1: int, buffer: I64) -> None:
    """Reorder ``rows`` in place, stably: the ``n1`` rows of the True side first."""
    a, b = 0, n1
    for i in range(rows.shape[0]):
        if side[i]:
            buffer[a] = rows[i]
            a += 1
        else:
            buffer[b] = rows[i]
            b += 1
    rows[:] = buffer[: rows.shape[0]]


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _dot(a: F32, b: F32) -> np.float32:
    acc = np.float32(0.0)
    for j in range(a.shape[0]):
        acc += a[j] * b[j]
    return acc


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def nearest_members(x: F32, order: I64, sizes: I64) -> I64:
    """Per leaf (members ``order`` grouped by leaf, ``sizes`` each; rows of ``x`` (n, d)), the
    member nearest the leaf's centroid; ties: the largest index (the most recent behaviour)."""
    out = np.empty(sizes.shape[0], np.int64)
    total, centroid = np.empty(x.shape[1], np.float32), np.empty(x.shape[1], np.float64)
    start = 0
    for leaf in range(sizes.shape[0]):
        members = order[start : start + sizes[leaf]]
        total[:] = 0.0
        for i in members:
            total += x[i]
        centroid[:] = total / sizes[leaf]  # float32 sums, float64 mean (as numpy's reduceat)
        best, at = np.inf, -1
        for i in members:
            dist = 0.0
            for j in range(x.shape[1]):
                diff = x[i, j] - centroid[j]
                dist += diff * diff
            if dist < best or (dist == best and i > at):
                best, at = dist, i
        out[leaf] = at
        start += sizes[leaf]
    return out


def warm_up() -> None:
    """Load (or compile, the first time on a machine) the kernels for the argument types
    the clustering passes, so that the ~0.1 s (cached) or ~7 s (compiling) is paid at start."""
    order, sizes = split_tree(np.zeros((2, 1), np.float32), 1, 0.25, 1)
    nearest_members(np.zeros((2, 1), np.float32), order, sizes)
