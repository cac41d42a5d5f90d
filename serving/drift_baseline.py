"""The pinned attention baseline that drift is measured against (ARCHITECTURE.md section 8).

Drift compares live attention with a *baseline* that does not follow the newest snapshot: the
live traffic's own statistics, accumulated over ``baseline_s`` seconds (the learning horizon)
and then pinned. Both are scored with one *anchor* model, the snapshot served when the baseline
began (:mod:`serving.drift` re-scores a request's sampled candidates with it once newer
snapshots serve), so that traffic drift moves when the traffic moves, not when the model learns.
The anchor's attention reference is pinned beside the baseline, so that each new snapshot's
reference can be compared with it (model drift). A lasting shift stays visible until someone
acknowledges it (``twinstream drift-ack``) or the optional ``roll_s`` horizon passes; either
starts a new baseline with the model served then as the anchor.

Statistics are *stratified* by the length of the attended sequence (``STRATA``) and *weighted*
so that every user counts once per stratum, whatever the number of requests or candidates
scored for them; the baseline remembers each stratum's share of users and, for the first
``max_users`` users it saw, each user's own distributions. A live window is compared with what
the baseline expects of the same users (:func:`serving.drift_window.compare`), so a change in
who is scored (fewer users, longer histories, one heavy client) leaves drift unchanged; what
those users' attention looks like moves it.

Acknowledgements go through a small JSON file that every worker process of a deployment reads
(``epoch``: a higher one than a process learnt its baseline under makes it learn a new one).
A pinned baseline and its anchor model are also written to disk (:mod:`serving.drift_persist`),
so a restarted worker goes on with the baseline of the current epoch instead of learning one.

>>> h = np.zeros((len(STRATA), 7, DRIFT_BINS)); h[1, :, 3] = 10.0
>>> learning = BaselineLearner(epoch=1, since=0.0)
>>> learning.add(h, np.eye(len(STRATA))[1] * 10)
>>> b = learning.pin(now=60.0, reference=None)
>>> b.weights[:3].tolist(), float(b.dists[1, 0, 3])
([0.0, 1.0, 0.0], 1.0)
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)
FORMAT = 1
DRIFT_BINS = 10  # bins of [0, 1] the drift compares (coarser than the references' 20)
# lower bounds of the strata by attended positions: 1-2, 3-5, 6-9, ..., 150-199, 200 and more
STRATA = (1, 3, 6, 10, 15, 20, 30, 50, 75, 100, 150, 200)


def stratum_of(lengths: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """The stratum of each row from its number of attended positions (>= 1).

    >>> stratum_of(np.array([1, 2, 3, 9, 10, 199, 200, 5000])).tolist()
    [0, 0, 1, 2, 3, 10, 11, 11]
    """
    return np.searchsorted(np.asarray(STRATA[1:]), lengths, side="right").astype(np.int64)


def coarsen(counts: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """(..., BINS) reference counts summed into (..., DRIFT_BINS) bins of the same edges."""
    bins = counts.shape[-1]
    if bins % DRIFT_BINS:
        raise ValueError(f"{bins} bins do not coarsen to {DRIFT_BINS}")
    shape = (*counts.shape[:-1], DRIFT_BINS, bins // DRIFT_BINS)
    return np.asarray(counts, dtype=np.float64).reshape(shape).sum(-1)


@dataclass(frozen=True)
class Baseline:
    """A pinned baseline: per stratum, each statistic's distribution over ``DRIFT_BINS`` bins
    (``dists``: (strata, statistics, DRIFT_BINS), each row summing to 1 where the stratum had
    users), the strata's shares of users (``weights``), each user's own distributions (those
    seen while learning, up to the learner's ``max_users``) and the reference pinned beside it."""

    epoch: int
    pinned_at: float  # unix seconds
    weights: npt.NDArray[np.float64]  # (strata,)
    dists: npt.NDArray[np.float64]  # (strata, statistics, DRIFT_BINS)
    users: float  # user-windows accumulated (a user counts once per stratum and window)
    reference: npt.NDArray[np.float64] | None  # (statistics, DRIFT_BINS) counts, or None
    sequence: str | None  # the sequence the pinned reference covers
    user_keys: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    user_dists: npt.NDArray[np.float32] = field(  # (users, statistics, DRIFT_BINS), sum 1
        default_factory=lambda: np.zeros((0, 7, DRIFT_BINS), np.float32)
    )

    @property
    def stratum_users(self) -> npt.NDArray[np.float64]:
        """(strata,) user-windows behind each stratum's distributions."""
        return self.weights * self.users


class BaselineLearner:
    """Accumulates the live window's stratified, per-user-weighted histograms until pinned, and
    each user's own (the first ``max_users`` users seen; 280 bytes each once pinned)."""

    def __init__(self, epoch: int, since: float, max_users: int = 100_000) -> None:
        self.epoch, self.since, self.max_users = epoch, since, max_users
        self.sums = np.zeros((len(STRATA), 7, DRIFT_BINS))  # user-weighted counts
        self.users = np.zeros(len(STRATA))
        self.windows = 0
        self.per_user: dict[int, npt.NDArray[np.float64]] = {}  # key -> summed histograms

    def add(
        self,
        hist: npt.NDArray[np.float64],
        users: npt.NDArray[np.int64],
        user_keys: npt.NDArray[np.int64] | None = None,
        user_hist: npt.NDArray[np.float64] | None = None,
    ) -> None:
        """One window: ``hist`` (strata, statistics, DRIFT_BINS) sums to ``users`` per stratum;
        ``user_hist`` (len(user_keys), statistics, DRIFT_BINS) holds each user's, summing to 1."""
        self.sums += hist
        self.users += users
        self.windows += 1
        if user_keys is None or user_hist is None:
            return
        for key, h in zip(user_keys.tolist(), user_hist, strict=True):
            mine = self.per_user.get(key)
            if mine is not None:
                mine += h
            elif len(self.per_user) < self.max_users:
                self.per_user[key] = h.copy()

    def pin(
        self, now: float, reference: npt.NDArray[np.float64] | None, sequence: str | None = None
    ) -> Baseline:
        total = self.users.sum()
        weights = self.users / total if total > 0 else self.users
        dists = self.sums / np.maximum(self.users, 1e-12)[:, None, None]
        keys = np.array(sorted(self.per_user), dtype=np.int64)
        own = np.array([self.per_user[k] for k in keys.tolist()]).reshape(-1, 7, DRIFT_BINS)
        own /= np.maximum(own.sum(-1, keepdims=True), 1e-12)
        return Baseline(
            self.epoch, now, weights, dists, float(total), reference, sequence,
            keys, own.astype(np.float32),
        )  # fmt: skip


@dataclass(frozen=True)
class BaselineFileState:
    """What the shared file says: the epoch baselines are learnt under now."""

    epoch: int


class BaselineFile:
    """The JSON file the worker processes share (written atomically: temporary file, rename)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._seen: float | None = None  # mtime of the last version read

    def changed(self) -> BaselineFileState | None:
        """The file's content when it changed since the last call (None otherwise, or when
        there is no file or it cannot be read)."""
        if self.path is None:
            return None
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return None
        if mtime == self._seen:
            return None
        self._seen = mtime
        return self.read()

    def read(self) -> BaselineFileState | None:
        if self.path is None:
            return None
        try:
            return BaselineFileState(int(json.loads(self.path.read_text())["epoch"]))
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("drift baseline file %s unreadable (%s); ignored", self.path, err)
            return None

    def write(self, doc: dict[str, Any]) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.path)
        self._seen = self.path.stat().st_mtime


def acknowledge(path: Path, now: float | None = None) -> int:
    """Acknowledge the drift: every worker reading ``path`` drops its pinned baseline and
    learns a new one from now on. Returns the new epoch.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "b.json"
    >>> acknowledge(p, now=5.0), acknowledge(p, now=6.0), BaselineFile(p).read()
    (1, 2, BaselineFileState(epoch=2))
    """
    state = BaselineFile(path).read() if path.exists() else None
    epoch = (state.epoch if state is not None else 0) + 1
    at = time.time() if now is None else now
    BaselineFile(path).write({"format": FORMAT, "epoch": epoch, "acknowledged_at": at})
    return epoch
