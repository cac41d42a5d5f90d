"""Attention drift: traffic drift and model drift against a pinned baseline (ARCHITECTURE.md
section 8).

The scorer hands every answered request's attention to :meth:`AttentionDrift.observe` (at most
``rows_per_request`` candidates of each request, evenly spaced). Their statistics (normalised
entropy, top-k mass, mass by recency bucket, share of mass on the candidate's category; computed
by :func:`serving.attention.attention_stats`, as the trainer computes each snapshot's reference)
go to a live window that keeps the rows of the last ``window_age_s`` seconds (at most ``window``
rows; :mod:`serving.drift_window`). Two questions, two families of gauges, per statistic::

    twinstream_attention_drift_js{statistic}        traffic drift: the live window against the
    twinstream_attention_drift_psi{statistic}       pinned baseline (Jensen-Shannon base 2 in
                                                    [0, 1]; population stability index)
    twinstream_attention_model_drift_js{statistic}  model drift: the serving snapshot's reference
                                                    against the reference pinned with the baseline
    twinstream_attention_live_mean{statistic}       mean of the statistic over the live window
    twinstream_attention_drift_noise_js{statistic}  noise floor taken off the traffic drift
    twinstream_attention_drift_mix_js{statistic}    who is scored, alone: the baseline's
                                                    expectation for the live users against
                                                    the baseline's population

The baseline (:mod:`serving.drift_baseline`) is learnt from live traffic over ``baseline_s``
seconds, then pinned; it does not follow new snapshots, so a lasting shift keeps the traffic
drift up until it is acknowledged (``twinstream drift-ack``) or ``baseline_roll_s`` passes. Every
user weighs once, and the live window is compared with what the baseline expects of *the same
users* (each one's own baseline statistics where it has them, else its strata by attended
length; :func:`serving.drift_window.compare`) less the window's own sampling-noise floor, so a
change in who is scored (a few heavy users, one client) does not move drift. Traffic drift is
exported only while the window holds ``min_rows`` rows of ``min_users`` users; otherwise (no
traffic, a handful of users, no pinned baseline yet) the series are absent: no claim. Also
exported: ``twinstream_attention_window_rows``, ``_window_users``, ``_drift_users``,
``_drift_matched_users``, ``_reference_rows``, ``_baseline_pinned_timestamp_seconds``
(absent while a baseline is learnt) and ``_baseline_learning`` (1 while learning).

>>> from prometheus_client import CollectorRegistry
>>> drift = AttentionDrift(DriftConfig(window=100, min_rows=1), CollectorRegistry())
>>> drift.traffic_drift() is None  # no rows, no baseline
True
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from contracts.settings import Settings
from models.batch import Batch
from serving.attention import BINS, STAT_NAMES, attended_sequence, attention_stats, js_divergence
from serving.drift_baseline import (
    Baseline,
    BaselineFile,
    BaselineLearner,
    coarsen,
    stratum_of,
)
from serving.drift_persist import load_pinned, save_pinned
from serving.drift_window import LiveWindow, compare, stratified_histograms, user_histograms

log = logging.getLogger(__name__)
BIN_EDGES = np.linspace(0.0, 1.0, BINS + 1).round(6).tolist()
BASELINE_FILE = "drift-baseline.json"  # in the state folder unless drift_baseline_path says
# the anchor model's (batch, attention) for the given candidates of the request being observed
Rescore = Callable[[Any, list[int]], tuple[Batch, "torch.Tensor | None"]]


@dataclass(frozen=True)
class DriftConfig:
    window: int = 5_000  # live scored rows kept at most
    min_rows: int = 500  # rows needed (live window, references) before drift is exported
    rows_per_request: int = 32  # candidates of one request fed to the window, evenly spaced
    window_age_s: float = 120.0  # live rows older than this drop out
    min_users: int = 50  # users in the live window before traffic drift is exported
    min_stratum_users: int = 10  # users a stratum needs in the live window to be compared
    baseline_s: float = 3_600.0  # live traffic accumulated into a baseline before it is pinned
    baseline_roll_s: float | None = None  # a pinned baseline is learnt again after this
    baseline_path: Path | None = None  # shared by the worker processes; None: not persisted
    baseline_users: int = 100_000  # users whose own statistics a baseline keeps (280 B each)

    def __post_init__(self) -> None:
        if min(self.window, self.min_rows, self.rows_per_request, self.min_users) < 1:
            raise ValueError("window, min_rows, rows_per_request and min_users must be >= 1")
        if self.window_age_s <= 0 or self.baseline_s <= 0:
            raise ValueError("window_age_s and baseline_s must be positive")

    @classmethod
    def from_settings(cls, s: Settings) -> DriftConfig:
        path = s.drift_baseline_path or str(Path(s.state_dir) / BASELINE_FILE)
        return cls(
            window=s.drift_window,
            min_rows=s.drift_min_rows,
            rows_per_request=s.drift_rows_per_request,
            window_age_s=s.drift_window_age_s,
            min_users=s.drift_min_users,
            min_stratum_users=s.drift_min_stratum_users,
            baseline_s=s.drift_baseline_s,
            baseline_roll_s=s.drift_baseline_roll_s,
            baseline_path=Path(path),
            baseline_users=s.drift_baseline_users,
        )


@dataclass(frozen=True)
class Reference:
    """The reference histograms of one snapshot: (len(STAT_NAMES), BINS) counts."""

    version: int
    sequence: str
    counts: npt.NDArray[np.int64]

    @property
    def rows(self) -> int:
        return int(self.counts[0].sum())


@dataclass(frozen=True)
class Drift:
    js: dict[str, float]  # the live window vs the baseline's expectation for its users, less noise
    psi: dict[str, float]
    users: int = 0  # live users compared
    matched: int = 0  # of which the baseline holds their own statistics
    noise: dict[str, float] | None = None  # the window's sampling-noise floor (subtracted)
    mix: dict[str, float] | None = None  # the expectation vs the baseline population


def parse_reference(version: int, attention: dict[str, Any] | None) -> Reference | None:
    """A manifest's ``attention`` block as a :class:`Reference`; None when absent or binned
    differently from this code (then comparing would be meaningless)."""
    if not attention:
        return None
    histograms = attention.get("histograms") or {}
    if attention.get("bin_edges") != BIN_EDGES or set(histograms) != set(STAT_NAMES):
        log.warning("snapshot v%d: attention reference binned differently; no drift", version)
        return None
    counts = np.array([histograms[name] for name in STAT_NAMES], dtype=np.int64)
    if counts.shape != (len(STAT_NAMES), BINS):
        log.warning("snapshot v%d: attention reference has shape %s", version, counts.shape)
        return None
    return Reference(version, str(attention.get("sequence")), counts)


def anchor_copy(model: Any) -> Any:
    """A copy of the serving model that stays as it is: deltas (serving/delta_follow.py) update
    the serving model in place. Copied once per baseline, beside the serving one in memory."""
    with torch.inference_mode():
        return copy.deepcopy(model)


def reference_of(model: Any) -> Reference | None:
    """The attention reference in ``model``'s manifest, if it covers the sequence it attends."""
    manifest = getattr(model, "manifest", None)
    ref = parse_reference(model.version, getattr(manifest, "attention", None))
    attends = getattr(type(model.model), "attends", None)
    return ref if ref is not None and ref.sequence == attends else None


def _row_stats(
    attends: str, batch: Batch, attention: torch.Tensor, rows: list[int]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """(strata, statistics) of ``rows`` of a scored batch (those with weight on a position)."""
    mask, category = attended_sequence(batch, attends)
    att, mask = attention[rows], mask[rows]
    stats = attention_stats(att, mask, category[rows], batch.target_category[rows])
    lengths = mask.sum(1)[(att.float() * mask).sum(1) > 0]  # the rows attention_stats kept
    return stratum_of(lengths.cpu().numpy().astype(np.int64)), stats


def user_key(user: str | None, fallback: int) -> int:
    """A stable integer per user id (CRC32); ``fallback`` (one per request) without an id."""
    return fallback if user is None else zlib.crc32(user.encode())


class AttentionDrift(Collector):
    """Live attention window, pinned baseline and drift gauges on ``registry`` (module doc)."""

    def __init__(
        self,
        config: DriftConfig,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config, self.clock = config, clock
        self._window = LiveWindow(config.window, config.window_age_s)
        self._file = BaselineFile(config.baseline_path)
        self._baseline: Baseline | None = None
        self._learner = self._new_learner(0, clock())
        self._learnt_at = -np.inf  # when the learner last took a window
        self._anchor: Any = None  # the model the baseline and the live window are scored with
        self._reference: Reference | None = None  # the serving snapshot's
        self._version: int | None = None  # the serving version the reference was read from
        self._requests = 0
        self._lock = threading.Lock()
        self._saver: threading.Thread | None = None  # writing the pinned baseline to disk
        state = self._file.changed()
        self._learner = self._new_learner(0 if state is None else state.epoch, clock())
        self._restore()
        registry.register(self)

    @property
    def pinned_folder(self) -> Path | None:
        """Where pinned baselines and their anchors are kept (:mod:`serving.drift_persist`)."""
        path = self.config.baseline_path
        return None if path is None else path.parent / "drift-pinned"

    def _restore(self) -> None:
        """Go on with the baseline pinned under the current epoch, if one is on disk."""
        folder = self.pinned_folder
        restored = None if folder is None else load_pinned(folder, self._learner.epoch)
        if restored is not None:
            self._baseline, self._anchor = restored
            log.info("attention drift baseline of epoch %d loaded", self._learner.epoch)

    # ---------------------------------------------------------------- feeding

    def observe(
        self,
        model: Any,
        batch: Batch,
        attention: torch.Tensor,
        user: str | None = None,
        rescore: Rescore | None = None,
    ) -> None:
        """Feed one scored request of ``user``: ``model`` served it (a ``ServingModel``),
        ``attention`` is its (B, S) output over the sequence ``type(model.model).attends``
        names. While another model is the anchor, ``rescore(anchor, rows)`` gives the anchor's
        batch and attention for those candidates (without it, ``model``'s are taken)."""
        if getattr(type(model.model), "attends", None) is None:
            return
        n = attention.shape[0]
        rows = list(range(0, n, -(-n // self.config.rows_per_request)))  # ≤ rows_per_request
        with self._lock:
            if model.version != self._version:
                self._use(model)
            if self._anchor is None:
                self._anchor = anchor_copy(model)
            anchor = self._anchor
        scored = (batch, attention, rows)
        if anchor.version != model.version and rescore is not None:
            batch_a, attention_a = rescore(anchor, rows)
            if attention_a is None:
                return
            scored = (batch_a, attention_a, list(range(len(rows))))
        strata, stats = _row_stats(type(anchor.model).attends, *scored)
        now = self.clock()
        with self._lock:
            if self._anchor is not anchor:  # acknowledged meanwhile
                return
            self._requests += 1
            self._window.add(now, user_key(user, -self._requests), strata, stats)
            self._tick(now)

    def _use(self, model: Any) -> None:
        self._reference = reference_of(model)
        self._version = model.version

    # ---------------------------------------------------------------- the baseline

    def _tick(self, now: float) -> None:
        """Follow acknowledgements in the shared file; while learning, take the window every
        ``learn_every_s`` and pin once ``baseline_s`` has passed; roll a pinned baseline after
        ``baseline_roll_s``."""
        state = self._file.changed()
        if state is not None and state.epoch > self._learner.epoch:
            self._restart(state.epoch, now)  # acknowledged: learn a new baseline from now
        cfg = self.config
        if self._baseline is not None:
            roll = cfg.baseline_roll_s
            if roll is not None and now - self._baseline.pinned_at >= roll:
                self._restart(self._baseline.epoch + 1, now)
                self._file.write({"format": 1, "epoch": self._learner.epoch, "rolled_at": now})
            return
        if now - self._learnt_at >= min(cfg.window_age_s / 2, cfg.baseline_s / 4):
            rows = self._window.rows(now)
            hist, users = stratified_histograms(rows)
            if users.sum() > 0:
                if self._learner.windows == 0:  # the horizon counts from the first traffic
                    self._learner.since = now
                keys, own, _ = user_histograms(rows)
                self._learner.add(hist, users, keys, own)
                self._learnt_at = now
        learner = self._learner
        if now - learner.since >= cfg.baseline_s and learner.users.sum() >= cfg.min_users:
            ref = None if self._anchor is None else reference_of(self._anchor)
            self._baseline = learner.pin(
                now,
                None if ref is None else coarsen(ref.counts),
                None if ref is None else ref.sequence,
            )
            log.info("attention drift baseline pinned (epoch %d)", self._baseline.epoch)
            if self.pinned_folder is not None:  # written beside requests, not under the lock
                args = (self.pinned_folder, self._baseline, self._anchor)
                self._saver = threading.Thread(target=save_pinned, args=args, daemon=True)
                self._saver.start()

    def _new_learner(self, epoch: int, now: float) -> BaselineLearner:
        return BaselineLearner(epoch, now, self.config.baseline_users)

    def _restart(self, epoch: int, now: float) -> None:
        """Learn a new baseline with the model served next as the anchor."""
        self._baseline, self._anchor = None, None
        self._learner = self._new_learner(epoch, now)
        self._learnt_at = -np.inf
        self._window.clear()
        log.info("attention drift baseline: learning a new one (epoch %d)", epoch)

    # ---------------------------------------------------------------- reading

    @property
    def rows(self) -> int:
        """Scored rows in the live window."""
        with self._lock:
            return len(self._window.rows(self.clock())[0])

    @property
    def baseline(self) -> Baseline | None:
        with self._lock:
            return self._baseline

    def traffic_drift(self) -> Drift | None:
        """JS and PSI per statistic of the live window against the pinned baseline; None while
        there is no baseline or the window has fewer than ``min_rows`` rows or ``min_users``
        users in the strata compared."""
        now = self.clock()
        with self._lock:
            self._tick(now)
            base, rows = self._baseline, self._window.rows(now)
        if base is None or len(rows[0]) < self.config.min_rows:
            return None
        c = compare(rows, base, self.config.min_stratum_users)
        if c is None or c.users < self.config.min_users:
            return None
        return Drift(c.js, c.psi, c.users, c.matched, c.noise, c.mix)

    def model_drift(self) -> dict[str, float] | None:
        """JS per statistic of the serving snapshot's reference against the pinned one."""
        with self._lock:
            base, ref = self._baseline, self._reference
        if base is None or base.reference is None or ref is None or ref.sequence != base.sequence:
            return None
        if ref.rows < self.config.min_rows or base.reference[0].sum() < self.config.min_rows:
            return None
        now = coarsen(ref.counts)
        return {n: js_divergence(now[j], base.reference[j]) for j, n in enumerate(STAT_NAMES)}

    def live_means(self) -> dict[str, float] | None:
        """Per statistic, the mean over the live window's rows."""
        with self._lock:
            stats = self._window.rows(self.clock())[2]
        if stats.shape[0] == 0:
            return None
        return dict(zip(STAT_NAMES, stats.mean(0).tolist(), strict=True))

    # ---------------------------------------------------------------- prometheus

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from _families().values()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        f = _families()
        traffic, model, means = self.traffic_drift(), self.model_drift(), self.live_means()
        per_statistic = {
            "drift_js": None if traffic is None else traffic.js,
            "drift_psi": None if traffic is None else traffic.psi,
            "drift_noise_js": None if traffic is None else traffic.noise,
            "drift_mix_js": None if traffic is None else traffic.mix,
            "model_drift_js": model,
            "live_mean": means,
        }
        for key, values in per_statistic.items():
            for name, value in (values or {}).items():
                f[key].add_metric([name], value)
        if traffic is not None:
            f["drift_users"].add_metric([], float(traffic.users))
            f["drift_matched_users"].add_metric([], float(traffic.matched))
        with self._lock:
            live = self._window.rows(self.clock())
            f["window_rows"].add_metric([], float(len(live[0])))
            f["window_users"].add_metric([], float(np.unique(live[0]).size))
            f["reference_rows"].add_metric(
                [], float(self._reference.rows if self._reference else 0)
            )
            if self._baseline is not None:
                f["baseline_pinned_timestamp_seconds"].add_metric([], self._baseline.pinned_at)
            f["baseline_learning"].add_metric([], float(self._baseline is None))
        yield from f.values()


FAMILIES = {  # twinstream_attention_<key>: (help, labelled by statistic)
    "drift_js": (
        "Traffic drift: Jensen-Shannon divergence (base 2) of the live window vs what the pinned "
        "baseline expects of the same users, less the window's noise floor",
        True,
    ),
    "drift_psi": ("Traffic drift: population stability index, same comparison", True),
    "drift_noise_js": (
        "Sampling-noise floor of the traffic drift, from the live window (users swapped at random)",
        True,
    ),
    "drift_mix_js": (
        "Who is scored, alone: the baseline's expectation for the live users vs its population",
        True,
    ),
    "model_drift_js": (
        "Model drift: Jensen-Shannon divergence of the serving snapshot's reference vs the "
        "reference pinned with the baseline",
        True,
    ),
    "live_mean": ("Mean of an attention statistic over the live window", True),
    "drift_users": ("Live users behind the traffic drift", False),
    "drift_matched_users": ("Live users whose own statistics the baseline holds", False),
    "window_rows": ("Scored rows in the live attention window", False),
    "window_users": ("Distinct users in the live attention window", False),
    "reference_rows": (
        "Rows behind the serving snapshot's attention reference (0: none usable)",
        False,
    ),
    "baseline_pinned_timestamp_seconds": (
        "When the drift baseline was pinned (absent while one is learnt)",
        False,
    ),
    "baseline_learning": (
        "1 while a drift baseline is being learnt from live traffic, 0 once pinned",
        False,
    ),
}


def _families() -> dict[str, GaugeMetricFamily]:
    return {
        key: GaugeMetricFamily(
            f"twinstream_attention_{key}", doc, labels=["statistic"] if labelled else None
        )
        for key, (doc, labelled) in FAMILIES.items()
    }
