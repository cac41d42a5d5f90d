"""The live attention window: recent scored rows, aged out by time (ARCHITECTURE.md section 8).

Each row keeps when it was scored, whose request it was (a user key), its stratum (the length of
the attended sequence, :data:`serving.drift_baseline.STRATA`) and its attention statistics. Rows
older than ``age_s`` drop out, and at most ``capacity`` rows are kept, so a window without
traffic empties and no drift is claimed from old rows.

:func:`stratified_histograms` turns the rows into per-stratum histograms in which every user
weighs 1 (its rows share that weight): what a baseline learns of the population.
:func:`compare` sets the live window against what the baseline expects of *the same users*:
each live user's own baseline statistics when the baseline saw that user, else the baseline's
strata mixed like that user's rows. A change in who is scored (a few heavy users, one client)
moves the expectation with it, so it does not move the drift; a change in what those users'
attention looks like does. The window's own sampling noise (a few users give a noisy JS) is
estimated from the window itself, by swapping users' live and expected histograms at random,
and subtracted.

>>> w = LiveWindow(capacity=4, age_s=10.0)
>>> w.add(0.0, 7, np.array([0, 0]), np.full((2, 7), 0.5))
>>> w.add(5.0, 8, np.array([1]), np.full((1, 7), 0.5))
>>> len(w.rows(now=9.0)[0]), len(w.rows(now=12.0)[0]), len(w.rows(now=99.0)[0])
(3, 1, 0)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from serving.attention import STAT_NAMES, js_divergence, psi
from serving.drift_baseline import DRIFT_BINS, STRATA, Baseline

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


def lookup(
    sorted_keys: npt.NDArray[np.int64], keys: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Where each of ``keys`` is in ``sorted_keys``, and whether it is there.

    >>> pos, found = lookup(np.array([3, 8]), np.array([8, 5, 3, 9]))
    >>> pos[found].tolist(), found.tolist()
    ([1, 0], [True, False, True, False])
    """
    if sorted_keys.size == 0:
        return np.zeros(keys.size, dtype=np.int64), np.zeros(keys.size, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
    return pos, sorted_keys[pos] == keys


def user_histograms(
    rows: Rows,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per user of the rows: its key (sorted), its (statistics, DRIFT_BINS) histogram weighing
    1 in all (its rows share that weight) and the share of its rows in each stratum.

    >>> users = np.array([5, 5, 2]); strata = np.array([0, 1, 1])
    >>> keys, hist, share = user_histograms((users, strata, np.full((3, 7), 0.95)))
    >>> keys.tolist(), hist[:, 0, -1].tolist(), share[:, :2].tolist()
    ([2, 5], [1.0, 1.0], [[0.0, 1.0], [0.5, 0.5]])
    """
    users, strata, stats = rows
    keys, inverse, per_user = np.unique(users, return_inverse=True, return_counts=True)
    weight = 1.0 / per_user[inverse]  # (R,)
    idx = np.minimum((stats * DRIFT_BINS).astype(np.int64), DRIFT_BINS - 1)  # (R, statistics)
    n, flat = keys.size, inverse * DRIFT_BINS
    hist = np.zeros((n, len(STAT_NAMES), DRIFT_BINS))
    for j in range(len(STAT_NAMES)):
        counts = np.bincount(flat + idx[:, j], weights=weight, minlength=n * DRIFT_BINS)
        hist[:, j] = counts.reshape(n, DRIFT_BINS)
    share = (
        np.bincount(inverse * len(STRATA) + strata, weights=weight, minlength=n * len(STRATA))
        .reshape(n, len(STRATA))
        .astype(np.float64)
    )
    return keys, hist, share


@dataclass(frozen=True)
class Comparison:
    """The live window against the baseline re-weighted to the same users (module doc)."""

    js: dict[str, float]  # traffic drift: raw JS less the noise floor, at least 0
    raw: dict[str, float]  # JS(live, expected)
    noise: dict[str, float]  # the window's own sampling-noise floor (mean JS of swapped users)
    mix: dict[str, float]  # JS(expected, the baseline's own population): who is scored, alone
    psi: dict[str, float]
    users: int  # live users compared
    matched: int  # of which the baseline holds their own statistics


def compare(
    rows: Rows,
    base: Baseline,
    min_stratum_users: int,
    swaps: int = 16,
) -> Comparison | None:
    """Compare the live window's rows with what the baseline expects of the same users.

    Each live user weighs 1. The *expected* histogram of a user is its own from the baseline
    when the baseline holds it (matched), else the baseline's strata histograms mixed with that
    user's rows' strata shares (strata with fewer than ``min_stratum_users`` baseline users are
    left out). The noise floor is the mean JS over ``swaps`` draws that swap the live and the
    expected histogram of each user with probability 1/2 (what chance alone gives a window of
    these users); the traffic drift is the raw JS less that floor. None without any user.
    """
    users, strata, stats = rows
    known = base.stratum_users >= min_stratum_users  # (strata,)
    keep = known[strata] | lookup(base.user_keys, users)[1]
    if not keep.any():
        return None
    keys, live_u, share = user_histograms((users[keep], strata[keep], stats[keep]))
    own, matched = lookup(base.user_keys, keys)  # (U,)
    dists = np.where(known[:, None, None], base.dists, 0.0)
    by_strata = np.einsum("us,sjb->ujb", share * known, dists)  # (U, statistics, bins)
    by_strata /= np.maximum(by_strata.sum(-1, keepdims=True), 1e-12)
    expected_u = by_strata
    expected_u[matched] = base.user_dists[own[matched]]
    live, expected = live_u.mean(0), expected_u.mean(0)  # (statistics, bins)
    w = base.weights * known
    population = np.einsum("s,sjb->jb", w / max(w.sum(), 1e-12), dists)
    rng = np.random.default_rng(0)
    noise = np.zeros(len(STAT_NAMES))
    for _ in range(swaps):
        swap = rng.random(keys.size) < 0.5  # (U,)
        a = np.where(swap[:, None, None], expected_u, live_u).mean(0)
        b = np.where(swap[:, None, None], live_u, expected_u).mean(0)
        noise += [js_divergence(a[j], b[j]) for j in range(len(STAT_NAMES))]
    noise /= max(swaps, 1)
    raw = [js_divergence(live[j], expected[j]) for j in range(len(STAT_NAMES))]
    named = lambda v: dict(zip(STAT_NAMES, (float(x) for x in v), strict=True))  # noqa: E731
    return Comparison(
        js=named(np.maximum(0.0, np.array(raw) - noise)),
        raw=named(raw),
        noise=named(noise),
        mix=named(js_divergence(expected[j], population[j]) for j in range(len(STAT_NAMES))),
        psi=named(psi(expected[j], live[j]) for j in range(len(STAT_NAMES))),
        users=int(keys.size),
        matched=int(matched.sum()),
    )
