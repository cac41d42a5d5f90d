"""Attention drift (serving.drift): the reference is read with the snapshot's binning, drift is
zero for the reference's own traffic and large for shifted traffic, nothing is exported before
both sides have enough rows, and each request feeds a bounded number of rows."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from models import ModelConfig, build_model
from models.batch import Batch
from models.testing import random_batch
from serving.attention import (
    BINS,
    STAT_NAMES,
    AttentionWindow,
    attended_sequence,
    attention_stats,
    reference_dict,
)
from serving.drift import AttentionDrift, DriftConfig, parse_reference

CFG = ModelConfig(n_items=200, n_categories=20, dim=8, seq_len=30, topk=5)
MODEL = build_model("dare", CFG).eval()


def serving(version: int, attention: dict[str, Any] | None, model: Any = MODEL) -> Any:
    """What the scorer's holder serves: a model with a version and a manifest."""
    return SimpleNamespace(
        version=version, model=model, manifest=SimpleNamespace(attention=attention)
    )


def batches(seed: int, n: int = 6, sharp: bool = False) -> list[Batch]:
    """Scored batches; ``sharp`` makes every target category appear throughout the history."""
    out = []
    for i in range(n):
        b = random_batch(CFG, batch_size=40, seed=seed + i, min_len=5)
        if sharp:
            b = replace(b, hist_category=b.target_category.unsqueeze(1).expand_as(b.hist_category))
        out.append(b)
    return out


@torch.no_grad()
def attention(batch: Batch) -> torch.Tensor:
    out = MODEL(batch)
    assert out.attention is not None
    return out.attention


def reference_of(data: list[Batch]) -> dict[str, Any]:
    window = AttentionWindow(10_000)
    for b in data:
        mask, category = attended_sequence(b, "recent")
        window.update(attention_stats(attention(b), mask, category, b.target_category))
    return window.reference("recent")


def js_of(drift: AttentionDrift) -> dict[str, float]:
    result = drift.drift()
    assert result is not None
    return result.js


def test_reference_must_use_the_snapshot_binning() -> None:
    ref = reference_dict("recent", np.ones((len(STAT_NAMES), BINS), dtype=np.int64))
    parsed = parse_reference(3, ref)
    assert parsed is not None and parsed.rows == BINS and parsed.version == 3
    assert parse_reference(3, None) is None
    assert parse_reference(3, ref | {"bin_edges": [0.0, 0.5, 1.0]}) is None
    missing = dict(ref["histograms"])
    missing.pop("entropy")
    assert parse_reference(3, ref | {"histograms": missing}) is None


def test_live_traffic_like_the_reference_shows_no_drift_and_shifted_traffic_does() -> None:
    data = batches(seed=1)
    same = AttentionDrift(
        DriftConfig(window=1000, min_rows=50, rows_per_request=40), CollectorRegistry()
    )
    shifted = AttentionDrift(
        DriftConfig(window=1000, min_rows=50, rows_per_request=40), CollectorRegistry()
    )
    model = serving(1, reference_of(data))
    for b in data:
        same.observe(model, b, attention(b))
    for b in batches(seed=1, sharp=True):
        shifted.observe(model, b, attention(b))
    assert max(js_of(same).values()) == pytest.approx(0.0, abs=1e-9)
    assert js_of(shifted)["same_category"] > 0.5  # all mass on the target's category now
    result = shifted.drift()
    assert result is not None and result.psi["same_category"] > 1.0


def test_nothing_is_exported_before_both_sides_have_min_rows() -> None:
    registry = CollectorRegistry()
    drift = AttentionDrift(DriftConfig(window=1000, min_rows=100, rows_per_request=40), registry)
    data = batches(seed=2, n=4)
    small, full = serving(1, reference_of(data[:2])), serving(2, reference_of(data))
    for b in data[:3]:  # 120 live rows, but a reference of 80
        drift.observe(small, b, attention(b))
    assert registry.get_sample_value("twinstream_attention_window_rows") == 120
    assert drift.drift() is None
    assert (
        registry.get_sample_value("twinstream_attention_drift_js", {"statistic": "entropy"}) is None
    )
    fresh = AttentionDrift(
        DriftConfig(window=1000, min_rows=100, rows_per_request=40), registry=CollectorRegistry()
    )
    for b in data[:2]:
        fresh.observe(full, b, attention(b))
    assert fresh.drift() is None  # 80 live rows < 100
    drift.observe(full, data[3], attention(data[3]))  # the 160-row reference, 160 live rows
    for name in STAT_NAMES:
        for metric in ("twinstream_attention_drift_js", "twinstream_attention_drift_psi"):
            assert registry.get_sample_value(metric, {"statistic": name}) is not None


def test_a_request_feeds_at_most_rows_per_request_rows() -> None:
    registry = CollectorRegistry()
    drift = AttentionDrift(DriftConfig(window=1000, min_rows=1, rows_per_request=8), registry)
    b = random_batch(CFG, batch_size=100, seed=3, min_len=5)
    drift.observe(serving(1, None), b, attention(b))
    assert 0 < drift.rows <= 8
    assert registry.get_sample_value("twinstream_attention_window_rows") == drift.rows


def test_reference_follows_the_serving_version_and_its_sequence() -> None:
    registry = CollectorRegistry()
    drift = AttentionDrift(DriftConfig(window=1000, min_rows=10, rows_per_request=40), registry)
    data = batches(seed=4, n=2)
    ref = reference_of(data)
    drift.observe(serving(1, None), data[0], attention(data[0]))
    assert registry.get_sample_value("twinstream_attention_reference_rows") == 0
    drift.observe(serving(2, ref), data[1], attention(data[1]))  # a new version: read again
    assert registry.get_sample_value("twinstream_attention_reference_rows") == ref["rows"]
    drift.observe(serving(3, ref | {"sequence": "cluster"}), data[1], attention(data[1]))
    assert registry.get_sample_value("twinstream_attention_reference_rows") == 0  # other sequence


def test_models_without_attention_are_ignored() -> None:
    registry = CollectorRegistry()
    drift = AttentionDrift(DriftConfig(), registry)
    b = random_batch(CFG, batch_size=4, seed=5)
    pooled = build_model("mean", CFG).eval()
    drift.observe(serving(1, None, pooled), b, torch.ones(4, CFG.seq_len))
    assert registry.get_sample_value("twinstream_attention_window_rows") == 0
    assert drift.live_means() is None


def test_live_means_are_within_half_a_bin_of_the_exact_means() -> None:
    drift = AttentionDrift(
        DriftConfig(window=1000, min_rows=1, rows_per_request=40), CollectorRegistry()
    )
    exact = []
    for b in batches(seed=6, n=3):
        mask, category = attended_sequence(b, "recent")
        exact.append(attention_stats(attention(b), mask, category, b.target_category))
        drift.observe(serving(1, None), b, attention(b))
    means = drift.live_means()
    assert means is not None
    for j, name in enumerate(STAT_NAMES):
        assert abs(means[name] - float(np.concatenate(exact)[:, j].mean())) <= 0.5 / BINS + 1e-9
