"""The pinned attention baseline that drift is measured against (ARCHITECTURE.md section 8).

Drift compares live attention with a *baseline* that does not follow the newest snapshot: the
live traffic's own statistics, accumulated over ``baseline_s`` seconds (the learning horizon)
and then pinned. A lasting change of what the model attends to on live traffic therefore stays
visible until someone acknowledges it (``twinstream drift-ack``, which starts a new baseline) or
the optional ``roll_s`` horizon rolls it forward. The baseline also pins the attention reference
of the snapshot that served when it was pinned, so that each new snapshot's reference can be
compared with it (model drift).

Statistics are *stratified* by the length of the attended sequence (``STRATA``) and *weighted*
so that every user counts once per stratum, whatever the number of requests or candidates
scored for them; the baseline remembers each stratum's share of users, and a live window is
compared with the baseline re-weighted to the same shares (post-stratification). A change in
who is scored (fewer users, longer histories, one heavy client) then leaves drift unchanged;
what the users of each stratum look like moves it.

The baseline lives in a JSON file that every worker process of a deployment shares: the first to
pin writes it, the others adopt it, and an acknowledgement written there (a higher ``epoch``,
no histograms) makes each of them learn a new one.

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
from dataclasses import dataclass
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
    users), the strata's shares of users (``weights``), and the reference pinned beside it."""

    epoch: int
    pinned_at: float  # unix seconds
    weights: npt.NDArray[np.float64]  # (strata,)
    dists: npt.NDArray[np.float64]  # (strata, statistics, DRIFT_BINS)
    users: float  # user-windows accumulated (a user counts once per stratum and window)
    reference: npt.NDArray[np.float64] | None  # (statistics, DRIFT_BINS) counts, or None
    sequence: str | None  # the sequence the pinned reference covers

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "epoch": self.epoch,
            "pinned_at": self.pinned_at,
            "strata": list(STRATA),
            "bins": DRIFT_BINS,
            "weights": self.weights.tolist(),
            "dists": self.dists.tolist(),
            "users": self.users,
            "reference": None if self.reference is None else self.reference.tolist(),
            "sequence": self.sequence,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Baseline | None:
        """None for a document of another layout (then it is learnt again)."""
        if doc.get("strata") != list(STRATA) or doc.get("bins") != DRIFT_BINS:
            return None
        ref = doc.get("reference")
        return cls(
            epoch=int(doc["epoch"]),
            pinned_at=float(doc["pinned_at"]),
            weights=np.asarray(doc["weights"], dtype=np.float64),
            dists=np.asarray(doc["dists"], dtype=np.float64),
            users=float(doc["users"]),
            reference=None if ref is None else np.asarray(ref, dtype=np.float64),
            sequence=doc.get("sequence"),
        )


class BaselineLearner:
    """Accumulates the live window's stratified, per-user-weighted histograms until pinned."""

    def __init__(self, epoch: int, since: float) -> None:
        self.epoch, self.since = epoch, since
        self.sums = np.zeros((len(STRATA), 7, DRIFT_BINS))  # user-weighted counts
        self.users = np.zeros(len(STRATA))
        self.windows = 0

    def add(self, hist: npt.NDArray[np.float64], users: npt.NDArray[np.int64]) -> None:
        """One window: ``hist`` (strata, statistics, DRIFT_BINS) sums to ``users`` per stratum."""
        self.sums += hist
        self.users += users
        self.windows += 1

    def pin(
        self, now: float, reference: npt.NDArray[np.float64] | None, sequence: str | None = None
    ) -> Baseline:
        total = self.users.sum()
        weights = self.users / total if total > 0 else self.users
        dists = self.sums / np.maximum(self.users, 1e-12)[:, None, None]
        return Baseline(self.epoch, now, weights, dists, float(total), reference, sequence)


@dataclass(frozen=True)
class BaselineFileState:
    """What the shared file says: its ``epoch`` and, once pinned, the baseline."""

    epoch: int
    baseline: Baseline | None


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
            doc = json.loads(self.path.read_text())
            pinned = Baseline.from_json(doc) if "pinned_at" in doc else None
            return BaselineFileState(int(doc["epoch"]), pinned)
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("drift baseline %s unreadable (%s); learning one", self.path, err)
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
    """Drop the pinned baseline in ``path``: every worker learns a new one from now on.
    Returns the new epoch.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "b.json"
    >>> acknowledge(p, now=5.0), acknowledge(p, now=6.0), BaselineFile(p).read().baseline is None
    (1, 2, True)
    """
    state = BaselineFile(path).read() if path.exists() else None
    epoch = (state.epoch if state is not None else 0) + 1
    at = time.time() if now is None else now
    BaselineFile(path).write({"format": FORMAT, "epoch": epoch, "acknowledged_at": at})
    return epoch
