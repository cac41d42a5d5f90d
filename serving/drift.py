"""Live attention drift against the serving snapshot's reference (ARCHITECTURE.md section 8).

The scorer hands every answered request's attention to :meth:`AttentionDrift.observe`, which
keeps the statistics of the last ``window`` scored rows (at most ``rows_per_request`` candidates of
each request, evenly spaced) in a :class:`serving.attention.AttentionWindow`: normalised entropy,
top-k mass, mass by recency bucket and the share of mass on behaviours of the candidate's
category, computed by the same :func:`serving.attention.attention_stats` the trainer uses for the
reference each snapshot carries in ``manifest.attention``. At scrape time the collector compares
the live histograms with that reference (same ``BINS``, checked) and exports, per statistic::

    twinstream_attention_drift_js{statistic}    Jensen-Shannon divergence, base 2, in [0, 1]
    twinstream_attention_drift_psi{statistic}   population stability index
    twinstream_attention_live_mean{statistic}   mean of the statistic over the live window

plus ``twinstream_attention_window_rows`` and ``twinstream_attention_reference_rows``. Drift is
only exported once both sides hold ``min_rows`` rows (small samples inflate both divergences).
The window is not cleared when a new snapshot is swapped in: snapshots follow each other every
few seconds and their attention changes slowly, so the window spans the last few versions and is
compared with the newest reference.

>>> from prometheus_client import CollectorRegistry
>>> drift = AttentionDrift(DriftConfig(window=100, min_rows=1), CollectorRegistry())
>>> drift.drift() is None  # no model, no reference
True
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from models.batch import Batch
from serving.attention import (
    BINS,
    STAT_NAMES,
    AttentionWindow,
    attended_sequence,
    attention_stats,
    js_divergence,
    psi,
)

log = logging.getLogger(__name__)
BIN_EDGES = np.linspace(0.0, 1.0, BINS + 1).round(6).tolist()


@dataclass(frozen=True)
class DriftConfig:
    window: int = 5_000  # live scored rows kept
    min_rows: int = 500  # rows needed on both sides before drift is exported
    rows_per_request: int = 32  # candidates of one request fed to the window, evenly spaced

    def __post_init__(self) -> None:
        if self.window < 1 or self.min_rows < 1 or self.rows_per_request < 1:
            raise ValueError("window, min_rows and rows_per_request must be >= 1")


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
    js: dict[str, float]
    psi: dict[str, float]


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


class AttentionDrift(Collector):
    """Live attention window + drift gauges, registered on ``registry`` (see module doc)."""

    def __init__(self, config: DriftConfig, registry: CollectorRegistry) -> None:
        self.config = config
        self._window = AttentionWindow(config.window)
        self._reference: Reference | None = None
        self._version: int | None = None  # the serving version the reference was read from
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, model: Any, batch: Batch, attention: torch.Tensor) -> None:
        """Feed one scored request: ``model`` served it (a ``ServingModel``), ``attention`` is its
        (B, S) output over the sequence ``type(model.model).attends`` names."""
        attends = getattr(type(model.model), "attends", None)
        if attends is None:
            return
        n = attention.shape[0]
        rows = slice(None, None, -(-n // self.config.rows_per_request))  # ≤ rows_per_request
        mask, category = attended_sequence(batch, attends)
        stats = attention_stats(
            attention[rows], mask[rows], category[rows], batch.target_category[rows]
        )
        with self._lock:
            if model.version != self._version:
                self._use(model)
            self._window.update(stats)

    def _use(self, model: Any) -> None:
        manifest = getattr(model, "manifest", None)
        ref = parse_reference(model.version, getattr(manifest, "attention", None))
        attends = getattr(type(model.model), "attends", None)
        self._reference = ref if ref is not None and ref.sequence == attends else None
        self._version = model.version

    @property
    def rows(self) -> int:
        """Scored rows in the live window."""
        with self._lock:
            return len(self._window)

    def drift(self) -> Drift | None:
        """JS and PSI per statistic, or None while either side has fewer than ``min_rows``."""
        with self._lock:
            ref, live = self._reference, self._window.counts()
        need = self.config.min_rows
        if ref is None or ref.rows < need or int(live[0].sum()) < need:
            return None
        return Drift(
            js={name: js_divergence(live[j], ref.counts[j]) for j, name in enumerate(STAT_NAMES)},
            psi={name: psi(ref.counts[j], live[j]) for j, name in enumerate(STAT_NAMES)},
        )

    def live_means(self) -> dict[str, float] | None:
        """Per statistic, the live window's mean estimated from its histogram (bin centres,
        within half a bin width: 0.025)."""
        with self._lock:
            counts = self._window.counts()
        total = counts.sum(1)  # (7,)
        if total[0] == 0:
            return None
        centres = (np.arange(BINS) + 0.5) / BINS
        return dict(zip(STAT_NAMES, (counts @ centres / total).tolist(), strict=True))

    # ---------------------------------------------------------------- prometheus

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        js, ps, mean, rows, ref_rows = self._families()
        drift, means = self.drift(), self.live_means()
        for name in STAT_NAMES:
            if drift is not None:
                js.add_metric([name], drift.js[name])
                ps.add_metric([name], drift.psi[name])
            if means is not None:
                mean.add_metric([name], means[name])
        with self._lock:
            rows.add_metric([], float(len(self._window)))
            ref_rows.add_metric([], float(self._reference.rows if self._reference else 0))
        yield from (js, ps, mean, rows, ref_rows)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        stat = ["statistic"]
        return (
            GaugeMetricFamily(
                "twinstream_attention_drift_js",
                "Jensen-Shannon divergence (base 2) of live attention vs the snapshot reference",
                labels=stat,
            ),
            GaugeMetricFamily(
                "twinstream_attention_drift_psi",
                "Population stability index of live attention vs the snapshot reference",
                labels=stat,
            ),
            GaugeMetricFamily(
                "twinstream_attention_live_mean",
                "Mean of an attention statistic over the live window (from its histogram)",
                labels=stat,
            ),
            GaugeMetricFamily(
                "twinstream_attention_window_rows", "Scored rows in the live attention window"
            ),
            GaugeMetricFamily(
                "twinstream_attention_reference_rows",
                "Rows behind the serving snapshot's attention reference (0: none usable)",
            ),
        )
