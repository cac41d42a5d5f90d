"""The live attention window: recent scored rows, aged out by time (ARCHITECTURE.md section 8).

Each row keeps when it was scored, whose request it was (a user key), its stratum (the length of
the attended sequence, :data:`serving.drift_baseline.STRATA`) and its attention statistics. Rows
older than ``age_s`` drop out, and at most ``capacity`` rows are kept, so a window without
traffic empties and no drift is claimed from old rows.

:func:`stratified_histograms` turns the rows into per-stratum histograms in which every user
weighs 1 (its rows share that weight), and :func:`mixed_js` compares them with a baseline
re-weighted to the baseline's strata shares.

>>> w = LiveWindow(capacity=4, age_s=10.0)
>>> w.add(0.0, 7, np.array([0, 0]), np.full((2, 7), 0.5))
>>> w.add(5.0, 8, np.array([1]), np.full((1, 7), 0.5))
>>> len(w.rows(now=9.0)[0]), len(w.rows(now=12.0)[0]), len(w.rows(now=99.0)[0])
(3, 1, 0)
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from serving.attention import STAT_NAMES, js_divergence, psi
from serving.drift_baseline import DRIFT_BINS, STRATA

Rows = tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]


class LiveWindow:
    """A ring of the last ``capacity`` scored rows; :meth:`rows` keeps those under ``age_s``."""

    def __init__(self, capacity: int, age_s: float) -> None:
        self.capacity, self.age_s = capacity, age_s
        self._ts = np.full(capacity, -np.inf)
        self._user = np.zeros(capacity, dtype=np.int64)
        self._stratum = np.zeros(capacity, dtype=np.int64)
        self._stats = np.zeros((capacity, len(STAT_NAMES)))
        self._next = 0

    def add(
        self,
        now: float,
        user: int,
        strata: npt.NDArray[np.int64],  # (R,)
        stats: npt.NDArray[np.float64],  # (R, statistics)
    ) -> None:
        strata, stats = strata[-self.capacity :], stats[-self.capacity :]
        slots = (self._next + np.arange(stats.shape[0])) % self.capacity
        self._ts[slots] = now
        self._user[slots] = user
        self._stratum[slots] = strata
        self._stats[slots] = stats
        self._next += stats.shape[0]

    def clear(self) -> None:
        self._ts[:] = -np.inf

    def rows(self, now: float) -> Rows:
        """(users, strata, stats) of the rows scored within ``age_s`` before ``now``."""
        keep = self._ts >= now - self.age_s
        return self._user[keep], self._stratum[keep], self._stats[keep]


def stratified_histograms(
    rows: Rows,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """(strata, statistics, DRIFT_BINS) histograms in which each user of a stratum weighs 1,
    and the users per stratum.

    >>> users = np.array([1, 1, 1, 2]); strata = np.zeros(4, dtype=np.int64)
    >>> stats = np.array([[0.05] * 7, [0.05] * 7, [0.05] * 7, [0.95] * 7])
    >>> hist, n = stratified_histograms((users, strata, stats))
    >>> n[:3].tolist(), float(hist[0, 0, 0]), float(hist[0, 0, -1])  # 3 rows of user 1 weigh 1
    ([2, 0, 0], 1.0, 1.0)
    """
    users, strata, stats = rows
    hist = np.zeros((len(STRATA), len(STAT_NAMES), DRIFT_BINS))
    counts = np.zeros(len(STRATA), dtype=np.int64)
    idx = np.minimum((stats * DRIFT_BINS).astype(np.int64), DRIFT_BINS - 1)  # (R, statistics)
    for s in range(len(STRATA)):
        sel = strata == s
        if not sel.any():
            continue
        _, inverse, per_user = np.unique(users[sel], return_inverse=True, return_counts=True)
        weight = 1.0 / per_user[inverse]
        for j in range(len(STAT_NAMES)):
            hist[s, j] = np.bincount(idx[sel, j], weights=weight, minlength=DRIFT_BINS)
        counts[s] = per_user.size
    return hist, counts


def mixed_js(
    hist: npt.NDArray[np.float64],  # (strata, statistics, bins) live, user-weighted
    users: npt.NDArray[np.int64],  # (strata,)
    dists: npt.NDArray[np.float64],  # (strata, statistics, bins) baseline, rows sum to 1
    weights: npt.NDArray[np.float64],  # (strata,) baseline shares of users
    min_stratum_users: int,
) -> tuple[dict[str, float], dict[str, float], int] | None:
    """JS and PSI per statistic between the live window and the baseline, both mixed with the
    baseline's strata shares over the strata the live window has ``min_stratum_users`` in;
    with the live users those strata hold. None when no stratum qualifies."""
    use = (users >= min_stratum_users) & (weights > 0)
    if not use.any():
        return None
    w = weights[use] / weights[use].sum()  # (used,)
    live = np.einsum("s,sjb->jb", w, hist[use] / users[use][:, None, None])  # (statistics, bins)
    base = np.einsum("s,sjb->jb", w, dists[use])
    js = {name: js_divergence(live[j], base[j]) for j, name in enumerate(STAT_NAMES)}
    ps = {name: psi(base[j], live[j]) for j, name in enumerate(STAT_NAMES)}
    return js, ps, int(users[use].sum())
