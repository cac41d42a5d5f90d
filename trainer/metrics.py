"""CTR metrics as library code: AUC, per-user GAUC, clipped logloss and a sliding window of them.

Policies for the corner cases a stream produces:

- **one class or empty window**: AUC and GAUC are undefined there and return ``nan`` (never raise,
  never divide by zero); logloss of an empty window is ``nan``.
- **ties**: tied scores get their average rank, so the AUC of tied pairs is 1/2 and the result does
  not depend on the input order.
- **NaN scores**: rejected with :class:`ValueError`. A NaN prediction means a broken model;
  dropping it silently would make a diverging model look healthy.
- labels must be 0 or 1 (bool, int or float).

>>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
0.75
>>> auc([1, 1], [0.2, 0.9])
nan
>>> auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5])
0.5
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

ArrayLike = npt.ArrayLike
FloatArray = npt.NDArray[np.float64]


def _as_labels(labels: ArrayLike) -> FloatArray:
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if not np.all((y == 0.0) | (y == 1.0)):
        raise ValueError("labels must be 0 or 1")
    return y


def _as_scores(scores: ArrayLike, n: int) -> FloatArray:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.shape[0] != n:
        raise ValueError(f"{s.shape[0]} scores for {n} labels")
    if np.isnan(s).any():
        raise ValueError("NaN scores: the model produced NaN predictions")
    return s


def _average_ranks(
    sorted_values: FloatArray, group_start: npt.NDArray[np.int64] | None = None
) -> FloatArray:
    """1-based ranks of an ascending array, ties sharing their average rank.

    With ``group_start`` (the start index of each element's group, the array being sorted by group
    then value) the ranks restart at 1 in every group.
    """
    n = sorted_values.shape[0]
    new_run = np.ones(n, dtype=bool)
    new_run[1:] = sorted_values[1:] != sorted_values[:-1]
    if group_start is not None:
        new_run[1:] |= group_start[1:] != group_start[:-1]
    starts = np.flatnonzero(new_run)
    run_len = np.diff(np.append(starts, n))
    offset = 0 if group_start is None else group_start[starts]
    avg = starts - offset + (run_len + 1) / 2.0
    return np.repeat(avg, run_len)


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula.

    Returns ``nan`` when the input is empty or has one class only.

    >>> auc([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1])
    0.75
    >>> auc([], [])
    nan
    """
    y = _as_labels(labels)
    s = _as_scores(scores, y.shape[0])
    n_pos = float(y.sum())
    n_neg = float(y.shape[0]) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    ranks = _average_ranks(s[order])
    rank_sum = float(ranks[y[order] == 1.0].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def gauc(labels: ArrayLike, scores: ArrayLike, groups: ArrayLike) -> float:
    """Group AUC: per-group (per-user) AUC averaged with weights = impressions of the group.

    Only groups with both classes count (as in DIN's GAUC); ``nan`` when there is none.

    >>> gauc([0, 1, 0, 1, 1], [0.1, 0.9, 0.8, 0.2, 0.5], [7, 7, 8, 8, 9])
    0.5
    """
    y = _as_labels(labels)
    s = _as_scores(scores, y.shape[0])
    _, g = np.unique(np.asarray(groups).reshape(-1), return_inverse=True)
    if g.shape[0] != y.shape[0]:
        raise ValueError(f"{g.shape[0]} groups for {y.shape[0]} labels")
    if y.shape[0] == 0:
        return float("nan")
    order = np.lexsort((s, g))  # by group, then score
    g, s, y = g[order], s[order], y[order]
    first = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    group_start = first[np.searchsorted(first, np.arange(g.shape[0]), side="right") - 1]
    ranks = _average_ranks(s, group_start)
    n_groups = int(g.max()) + 1
    size = np.bincount(g, minlength=n_groups).astype(np.float64)
    n_pos = np.bincount(g, weights=y, minlength=n_groups)
    n_neg = size - n_pos
    rank_sum = np.bincount(g, weights=ranks * y, minlength=n_groups)
    valid = (n_pos > 0) & (n_neg > 0)
    if not valid.any():
        return float("nan")
    per_group = (rank_sum[valid] - n_pos[valid] * (n_pos[valid] + 1) / 2) / (
        n_pos[valid] * n_neg[valid]
    )
    return float(np.average(per_group, weights=size[valid]))


def logloss(labels: ArrayLike, probs: ArrayLike, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy with probabilities clipped to ``[eps, 1 - eps]``.

    >>> round(logloss([1, 0], [0.5, 0.5]), 6)
    0.693147
    >>> logloss([1], [0.0]) < 17
    True
    """
    y = _as_labels(labels)
    p = np.clip(_as_scores(probs, y.shape[0]), eps, 1.0 - eps)
    if y.shape[0] == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


class SlidingWindowMetrics:
    """AUC, GAUC and logloss over the last ``window`` predictions of a stream.

    ``update`` appends a batch (oldest predictions fall out); the properties are computed on demand,
    so an update costs O(batch) and reading a metric O(window log window).

    >>> m = SlidingWindowMetrics(window=4)
    >>> m.update([1, 1], [0.9, 0.8], groups=[1, 1])
    >>> m.auc  # one class so far
    nan
    >>> m.update([0, 0, 1], [0.1, 0.85, 0.7], groups=[1, 2, 2])
    >>> len(m), m.auc  # the first prediction (0.9) fell out of the window
    (4, 0.5)
    """

    def __init__(self, window: int) -> None:
        if window <= 0:
            raise ValueError("window must be positive")
        self.window = window
        self._labels = np.zeros(window, dtype=np.float64)
        self._scores = np.zeros(window, dtype=np.float64)
        self._groups = np.zeros(window, dtype=np.int64)
        self._next = 0  # total predictions seen; slot = index % window
        self.seen = 0

    def __len__(self) -> int:
        return min(self._next, self.window)

    def update(
        self, labels: ArrayLike, scores: ArrayLike, groups: ArrayLike | Sequence[int]
    ) -> None:
        """Append a batch of labels, predicted probabilities and integer group keys (users)."""
        y = _as_labels(labels)
        s = _as_scores(scores, y.shape[0])
        g = np.asarray(groups, dtype=np.int64).reshape(-1)
        if g.shape[0] != y.shape[0]:
            raise ValueError(f"{g.shape[0]} groups for {y.shape[0]} labels")
        keep = slice(max(0, y.shape[0] - self.window), None)  # only the newest fit
        slots = (self._next + np.arange(y.shape[0])[keep]) % self.window
        self._labels[slots], self._scores[slots], self._groups[slots] = y[keep], s[keep], g[keep]
        self._next += y.shape[0]
        self.seen = self._next

    def _view(self) -> tuple[FloatArray, FloatArray, npt.NDArray[np.int64]]:
        n = len(self)
        return self._labels[:n], self._scores[:n], self._groups[:n]

    @property
    def auc(self) -> float:
        y, s, _ = self._view()
        return auc(y, s)

    @property
    def gauc(self) -> float:
        y, s, g = self._view()
        return gauc(y, s, g)

    @property
    def logloss(self) -> float:
        y, s, _ = self._view()
        return logloss(y, s)


def across_ranks(per_rank: Sequence[Sequence[float]]) -> dict[str, float | None]:
    """Each rank's (AUC, GAUC, logloss, window rows, loss) as one set of snapshot metrics: the
    window metrics averaged weighted by each rank's window rows, the loss plainly; None where no
    rank has a finite value.

    >>> nan = float("nan")
    >>> merged = across_ranks([[0.75, 0.5, 0.25, 300.0, 0.5], [0.5, nan, 0.5, 100.0, 0.25]])
    >>> merged["auc"], merged["gauc"], merged["logloss"], merged["loss"], merged["window_rows"]
    (0.6875, 0.5, 0.3125, 0.375, 400.0)
    """
    table = np.array(per_rank, dtype=np.float64)  # (ranks, 5)
    weights = table[:, 3]
    out = {
        name: _weighted(table[:, j], weights) for j, name in enumerate(("auc", "gauc", "logloss"))
    }
    out["window_rows"] = float(weights.sum())
    out["loss"] = _weighted(table[:, 4], np.ones_like(weights))
    out["ranks"] = float(table.shape[0])
    return out


def _weighted(values: FloatArray, weights: FloatArray) -> float | None:
    ok = np.isfinite(values) & (weights > 0)
    if not ok.any():
        return None
    return float(np.average(values[ok], weights=weights[ok]))
