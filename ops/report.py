"""A self-contained HTML report of a run (``twinstream report``): PNG plots embedded as base64.

From the snapshot folder (each ``manifest.json``: version, created, metrics, attention
reference): the streaming AUC / GAUC / logloss over time, the attention reference distributions
by snapshot, and the drift of each snapshot's reference from the first one. With a Prometheus
URL, also the live drift gauges, the streaming AUC as scraped, throughput and scoring latency over
the run (HTTP API range queries). Nothing is invented: a section without data says so.

Snapshot retention (``twinstream train --keep``, default 5) bounds how far back the manifests
reach; Prometheus keeps the whole run.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from serving.attention import BINS, STAT_NAMES, js_divergence
from serving.manifest import MANIFEST_FILE, Manifest, SnapshotError
from serving.snapshot import list_snapshots

log = logging.getLogger(__name__)
QUALITY = ("auc", "gauc", "logloss")
Curves = dict[str, tuple[np.ndarray, np.ndarray]]  # legend → (unix seconds, values)


@dataclass(frozen=True)
class ReportConfig:
    snapshot_dir: Path
    out: Path
    prometheus: str | None = None  # base URL, e.g. http://127.0.0.1:9090
    start: float | None = None  # unix seconds; None: the first snapshot (or an hour ago)
    end: float | None = None  # unix seconds; None: now
    title: str = "twinstream run report"


@dataclass
class Section:
    title: str
    text: str = ""
    images: list[str] = field(default_factory=list)  # base64 PNGs


# ---------------------------------------------------------------- sources


def read_manifests(snapshot_dir: Path) -> list[Manifest]:
    """The manifests of the snapshots on disk, oldest first (unreadable ones are skipped)."""
    out = []
    for path in list_snapshots(snapshot_dir):
        try:
            out.append(Manifest.from_json((path / MANIFEST_FILE).read_bytes()))
        except (OSError, SnapshotError) as err:
            log.warning("skipped %s: %s", path, err)
    return out


class PrometheusAPI:
    """Range queries over Prometheus's HTTP API (``/api/v1/query_range``)."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url, self.timeout_s = url.rstrip("/"), timeout_s

    def range(self, expr: str, start: float, end: float, legend: str) -> Curves:
        """``legend``: a label name to name each series by ('' for one unnamed series)."""
        step = max(1.0, (end - start) / 400)
        query = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
        url = f"{self.url}/api/v1/query_range?{query}"
        with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
            body = json.loads(resp.read())
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus answered {body.get('error')!r} to {expr!r}")
        curves: Curves = {}
        for series in body["data"]["result"]:
            values = np.array(series["values"], dtype=np.float64)  # (T, 2): time, value
            name = series["metric"].get(legend, "") if legend else ""
            curves[name] = (values[:, 0], values[:, 1])
        return curves


# ---------------------------------------------------------------- figures


def png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def line_figure(curves: Curves, title: str, ylabel: str, t0: float) -> str:
    fig = Figure(figsize=(8, 3.2))
    ax = fig.subplots()
    for name, (t, v) in sorted(curves.items()):
        ax.plot((t - t0) / 60, v, marker="." if len(t) < 50 else None, label=name)
    ax.set(title=title, ylabel=ylabel, xlabel=f"minutes since {_iso(t0)}")
    ax.grid(alpha=0.3)
    if len(curves) > 1 or any(curves):
        ax.legend(fontsize=7, loc="best")
    return png(fig)


def quality_curves(manifests: Sequence[Manifest]) -> Curves:
    t = np.array([m.created for m in manifests])
    return {
        name: (t, np.array([_number(m.metrics.get(name)) for m in manifests]))
        for name in QUALITY
        if any(m.metrics.get(name) is not None for m in manifests)
    }


def references(manifests: Sequence[Manifest]) -> list[tuple[Manifest, np.ndarray]]:
    """(manifest, (len(STAT_NAMES), BINS) counts) of the snapshots with a usable reference."""
    out = []
    for m in manifests:
        hist = (m.attention or {}).get("histograms") or {}
        if set(hist) == set(STAT_NAMES) and all(len(hist[s]) == BINS for s in STAT_NAMES):
            out.append((m, np.array([hist[s] for s in STAT_NAMES], dtype=np.float64)))
    return out


def reference_figure(refs: Sequence[tuple[Manifest, np.ndarray]]) -> str:
    fig = Figure(figsize=(12, 5.5), layout="constrained")
    axes = fig.subplots(2, 4).ravel()
    centres = (np.arange(BINS) + 0.5) / BINS
    colours = [_colour(i, len(refs)) for i in range(len(refs))]
    for j, name in enumerate(STAT_NAMES):
        for (m, counts), colour in zip(refs, colours, strict=True):
            share = counts[j] / max(1.0, counts[j].sum())
            axes[j].plot(centres, share, color=colour, label=f"v{m.version}")
        axes[j].set(title=name, xlim=(0, 1))
    axes[-1].axis("off")
    axes[-1].legend(*axes[0].get_legend_handles_labels(), loc="center", fontsize=7)
    fig.suptitle("Attention reference distributions (share of rows per bin) by snapshot")
    return png(fig)


def reference_drift(refs: Sequence[tuple[Manifest, np.ndarray]]) -> Curves:
    """Per statistic, JS divergence of each snapshot's reference from the first one's."""
    first = refs[0][1]
    t = np.array([m.created for m, _ in refs])
    return {
        name: (t, np.array([js_divergence(c[j], first[j]) for _, c in refs]))
        for j, name in enumerate(STAT_NAMES)
    }


def _colour(i: int, n: int) -> tuple[float, float, float]:
    x = i / max(1, n - 1)
    return (0.1 + 0.8 * x, 0.3, 0.9 - 0.8 * x)


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


# ---------------------------------------------------------------- sections


def snapshot_sections(manifests: Sequence[Manifest], t0: float) -> list[Section]:
    if not manifests:
        return [Section("Snapshots", "No readable snapshot in the snapshot folder.")]
    last = manifests[-1]
    summary = (
        f"{len(manifests)} snapshots on disk, v{manifests[0].version} to v{last.version}, model "
        f"{last.model}; the newest has trained {last.samples:,} rows in {last.step:,} steps. "
        f"Last window: {_metrics_text(last)}."
    )
    quality = quality_curves(manifests)
    sections = [Section("Streaming quality from the snapshot manifests", summary)]
    if quality:
        title = "Progressive validation over the sliding window, at each snapshot"
        sections[0].images.append(line_figure(quality, title, "metric", t0))
    refs = references(manifests)
    if not refs:
        sections.append(Section("Attention references", "No snapshot carries a reference."))
        return sections
    sections.append(Section("Attention references", images=[reference_figure(refs)]))
    return sections


def _metrics_text(m: Manifest) -> str:
    parts = [f"{k} {v:.4f}" for k in QUALITY if (v := m.metrics.get(k)) is not None]
    return ", ".join(parts) or "no metrics"


def drift_from_references(manifests: Sequence[Manifest], t0: float) -> Section:
    refs = references(manifests)
    title = "Attention drift (from the snapshots' references)"
    if len(refs) < 2:
        return Section(title, "Needs two snapshots with references.")
    text = (
        f"Jensen-Shannon divergence of each snapshot's reference from v{refs[0][0].version}'s "
        "(no Prometheus given: the live drift gauges are not available)."
    )
    curves = reference_drift(refs)
    return Section(title, text, [line_figure(curves, "JS vs the first reference", "JS", t0)])


PROMETHEUS_PLOTS = (
    # (section, title, unit, [(expr, legend label)])
    (
        "Attention drift (live, from Prometheus)",
        "twinstream_attention_drift_js by statistic",
        "JS",
        [("max by (statistic) (twinstream_attention_drift_js)", "statistic")],
    ),
    (
        "Streaming quality (from Prometheus)",
        "Streaming AUC / GAUC / logloss as scraped",
        "metric",
        [
            ("max(twinstream_streaming_auc)", ""),
            ("max(twinstream_streaming_gauc)", ""),
            ("max(twinstream_streaming_logloss)", ""),
        ],
    ),
    (
        "Throughput (from Prometheus)",
        "Events, score requests, samples per second",
        "per second",
        [
            ("sum(rate(twinstream_ingest_events_total[1m]))", ""),
            ("sum(rate(twinstream_score_requests_total[1m]))", ""),
            ("sum(rate(twinstream_trainer_samples_total[1m]))", ""),
        ],
    ),
    (
        "Latency (from Prometheus)",
        "Scoring latency quantiles",
        "seconds",
        [
            (
                f"histogram_quantile({q}, sum by (le) (rate(twinstream_score_seconds_bucket[1m])))",
                "",
            )
            for q in (0.5, 0.99)
        ],
    ),
)


def prometheus_sections(api: PrometheusAPI, start: float, end: float) -> list[Section]:
    sections = []
    for section, title, unit, queries in PROMETHEUS_PLOTS:
        curves: Curves = {}
        for expr, legend in queries:
            for name, curve in api.range(expr, start, end, legend).items():
                curves[name or _short(expr)] = curve
        if not curves:
            sections.append(Section(section, "Prometheus has no data for this range."))
            continue
        sections.append(Section(section, images=[line_figure(curves, title, unit, start)]))
    return sections


def _short(expr: str) -> str:
    if expr.startswith("histogram_quantile("):
        return f"p{float(expr.split('(', 1)[1].split(',', 1)[0]) * 100:g}"
    names = [w for w in expr.replace("(", " ").replace(")", " ").split() if "twinstream_" in w]
    return names[0].split("{")[0].replace("twinstream_", "") if names else expr


# ---------------------------------------------------------------- the page


def render(title: str, sections: Sequence[Section]) -> str:
    body = []
    for s in sections:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.text:
            body.append(f"<p>{html.escape(s.text)}</p>")
        body += [
            f'<img alt="{html.escape(s.title)}" src="data:image/png;base64,{b}">' for b in s.images
        ]
    style = "body{font-family:sans-serif;max-width:70em;margin:2em auto}img{max-width:100%}"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>Written {_iso(time.time())}.</p>{''.join(body)}</body></html>\n"
    )


def build_report(config: ReportConfig) -> Path:
    """Write the report to ``config.out``; returns its path."""
    manifests = read_manifests(config.snapshot_dir)
    end = config.end or time.time()
    start = config.start or (manifests[0].created - 60 if manifests else end - 3600)
    sections = snapshot_sections(manifests, start)
    if config.prometheus:
        sections += prometheus_sections(PrometheusAPI(config.prometheus), start, end)
    else:
        sections.append(drift_from_references(manifests, start))
        note = "Throughput and latency come from Prometheus: pass --prometheus URL."
        sections.append(Section("Throughput and latency", note))
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(render(config.title, sections))
    return config.out
