"""Attention drift (serving.drift): traffic drift against a pinned baseline that new snapshots
do not move, model drift of each snapshot's reference against the pinned one, robustness to who
is scored (strata, one weight per user), a window that ages out by time, the acknowledgement
shared by worker processes, and the reference read with the snapshot's binning."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from models import build_model
from models.batch import Batch
from models.testing import random_batch
from serving.attention import (
    BINS,
    STAT_NAMES,
    AttentionWindow,
    attended_sequence,
    attention_stats,
    js_divergence,
    reference_dict,
)
from serving.drift import AttentionDrift, DriftConfig, parse_reference
from serving.drift_baseline import acknowledge, coarsen
from serving.features import FeatureMapper, MapperConfig
from serving.loading import load_snapshot
from serving.snapshot import SnapshotContent, write_snapshot
from tests.support.drift import QUICK_DRIFT, SMALL_DARE

CFG, QUICK = SMALL_DARE, QUICK_DRIFT
torch.manual_seed(1)  # how much the untrained model attends by category depends on its draw
MODEL = build_model("dare", CFG).eval()


@dataclass
class Clock:
    t: float = 1_000.0

    def __call__(self) -> float:
        return self.t


def serving(version: int, attention: dict[str, Any] | None, model: Any = MODEL) -> Any:
    """What the scorer's holder serves: a model with a version and a manifest."""
    return SimpleNamespace(
        version=version, model=model, manifest=SimpleNamespace(attention=attention)
    )


def request(seed: int, lengths: tuple[int, int] = (3, 30), sharp: bool = False) -> Batch:
    """One user's history against 8 candidates; ``sharp``: every candidate's category is the
    category of the user's newest behaviour."""
    b = random_batch(CFG, batch_size=8, seed=seed, min_len=lengths[0], max_len=lengths[1])
    one = b.expand_history(8)
    if sharp:
        newest = one.hist_category[:, -1]
        one = replace(one, target_category=newest.clone())
    return one


@torch.no_grad()
def attention(batch: Batch) -> torch.Tensor:
    out = MODEL(batch)
    assert out.attention is not None
    return out.attention


def reference_of(data: list[Batch]) -> dict[str, Any]:
    window = AttentionWindow(100_000)
    for b in data:
        mask, category = attended_sequence(b, "recent")
        window.update(attention_stats(attention(b), mask, category, b.target_category))
    return window.reference("recent")


def traffic(
    drift: AttentionDrift,
    clock: Clock,
    seconds: float,
    users: range,
    model: Any,
    lengths: tuple[int, int] = (3, 30),
    sharp: bool = False,
    per_user: int = 1,
) -> None:
    """Every 10 s, ``per_user`` requests of each user (each user keeps its history)."""
    end = clock.t + seconds
    while clock.t < end:
        for u in users:
            b = request(u, lengths, sharp)
            for _ in range(per_user):
                drift.observe(model, b, attention(b), user=f"u{u}")
        clock.t += 10.0


def pinned(config: DriftConfig = QUICK, **kw: Any) -> tuple[AttentionDrift, Clock, Any]:
    clock = Clock()
    drift = AttentionDrift(config, kw.pop("registry", CollectorRegistry()), clock=clock)
    model = serving(1, reference_of([request(s) for s in range(100)]))
    traffic(drift, clock, config.baseline_s + 20, range(60), model, **kw)
    assert drift.baseline is not None
    return drift, clock, model


def js_of(drift: AttentionDrift) -> dict[str, float]:
    result = drift.traffic_drift()
    assert result is not None
    return result.js


def test_a_lasting_shift_stays_visible_whatever_the_snapshots_say() -> None:
    registry = CollectorRegistry()
    drift, clock, model = pinned(registry=registry)
    assert registry.get_sample_value("twinstream_attention_baseline_learning") == 0
    traffic(drift, clock, 60, range(100, 160), model)  # other users of the same kind
    quiet = js_of(drift)
    assert max(quiet.values()) < 0.05, quiet
    for version in range(2, 8):  # each snapshot's reference is taken from the shifted traffic
        shifted = [request(s, sharp=True) for s in range(version * 100, version * 100 + 40)]
        traffic(
            drift, clock, 60, range(200, 260), serving(version, reference_of(shifted)), sharp=True
        )
        assert js_of(drift)["same_category"] > 0.1  # still against the pinned baseline
    assert registry.get_sample_value(
        "twinstream_attention_drift_js", {"statistic": "same_category"}
    ) == pytest.approx(js_of(drift)["same_category"])


def test_who_is_scored_does_not_move_drift() -> None:
    """Pinned on a mix of histories of 3 to 30 behaviours; then only 25 users of 20 to 29 (one
    stratum), and one more scored 40 times: the stratified, per-user drift stays low although the
    plain histograms of the same rows are far from the baseline's."""
    drift, clock, model = pinned()
    base_rows = reference_of([request(s) for s in range(60)])
    traffic(drift, clock, 60, range(300, 325), model, lengths=(20, 29))
    heavy = request(999, (20, 29))
    for _ in range(40):
        drift.observe(model, heavy, attention(heavy), user="heavy")
    result = drift.traffic_drift()
    assert result is not None and result.users >= 20
    assert max(result.js.values()) < 0.08, result.js
    plain = reference_of([request(s, (20, 29)) for s in range(300, 325)] + [heavy] * 40)
    naive = {
        name: js_divergence(
            coarsen(np.array(plain["histograms"][name])),
            coarsen(np.array(base_rows["histograms"][name])),
        )
        for name in STAT_NAMES
    }
    assert max(naive.values()) > 0.1 and max(naive.values()) > 3 * max(result.js.values()), naive


def heavy_tail_baseline() -> tuple[AttentionDrift, Clock, Any]:
    """Pinned on 60 users and 25 heavy ones (users 500-524) whose candidates are always of their
    newest behaviour's category: the heavy users' attention differs from the others' in the
    same strata."""
    clock, model = Clock(), serving(1, None)
    drift = AttentionDrift(QUICK, CollectorRegistry(), clock=clock)
    while drift.baseline is None:
        for u, sharp in [(u, False) for u in range(60)] + [(u, True) for u in range(500, 525)]:
            b = request(u, sharp=sharp)
            drift.observe(model, b, attention(b), user=f"u{u}")
        clock.t += 10.0
    return drift, clock, model


def test_a_tail_of_heavy_users_with_unchanged_interests_does_not_move_drift() -> None:
    """Traffic narrows to the 25 heavy users: the baseline's expectation for those same users
    moves with them (drift_mix_js shows how far from the population), the drift does not."""
    drift, clock, model = heavy_tail_baseline()
    traffic(drift, clock, 60, range(500, 525), model, sharp=True, per_user=3)
    result = drift.traffic_drift()
    assert result is not None and result.users == result.matched == 25
    assert result.mix is not None and result.mix["same_category"] > 0.05, result.mix
    assert max(result.js.values()) < 0.01, result.js


def test_a_shift_among_those_same_few_users_still_shows() -> None:
    """The same 25 heavy users' candidates stop matching their newest behaviour: drift."""
    drift, clock, model = heavy_tail_baseline()
    traffic(drift, clock, 60, range(500, 525), model, sharp=False, per_user=3)
    result = drift.traffic_drift()
    assert result is not None and result.users == result.matched == 25
    assert result.js["same_category"] > 0.05, result.js


def test_the_noise_floor_of_a_few_users_is_subtracted() -> None:
    """30 new users of the baseline's kind: their raw JS is sampling noise, which the window's
    own floor (users swapped at random) accounts for."""
    drift, clock, model = pinned()
    traffic(drift, clock, 60, range(700, 730), model)
    result = drift.traffic_drift()
    assert result is not None and result.noise is not None and result.matched == 0
    for name in STAT_NAMES:
        assert result.js[name] <= max(0.0, result.js[name] + result.noise[name] - 1e-12) + 1e-9
    assert max(result.noise.values()) > 0.0
    assert max(result.js.values()) < 0.02, result.js


def test_the_learning_horizon_counts_from_the_first_traffic() -> None:
    """A worker idle for longer than the horizon does not pin a baseline on its first requests."""
    clock = Clock()
    drift = AttentionDrift(QUICK, CollectorRegistry(), clock=clock)
    clock.t += 5 * QUICK.baseline_s  # no requests
    traffic(drift, clock, 30, range(60), serving(1, None))
    assert drift.baseline is None
    traffic(drift, clock, QUICK.baseline_s, range(60), serving(1, None))
    assert drift.baseline is not None


def test_no_traffic_and_few_users_mean_no_claim() -> None:
    registry = CollectorRegistry()
    drift, clock, model = pinned(registry=registry)
    assert (
        registry.get_sample_value("twinstream_attention_drift_js", {"statistic": "entropy"})
        is not None
    )
    traffic(drift, clock, 60, range(10), model, per_user=20)  # 10 users, 1,600 rows: too few users
    assert drift.rows >= QUICK.min_rows and drift.traffic_drift() is None
    assert registry.get_sample_value("twinstream_attention_window_users") == 10
    clock.t += QUICK.window_age_s + 1  # then nothing at all
    assert registry.get_sample_value("twinstream_attention_window_rows") == 0
    for name in ("twinstream_attention_drift_js", "twinstream_attention_live_mean"):
        assert registry.get_sample_value(name, {"statistic": "entropy"}) is None


def test_model_drift_compares_each_snapshot_reference_with_the_pinned_one() -> None:
    registry = CollectorRegistry()
    drift, clock, model = pinned(registry=registry)
    same = drift.model_drift()
    assert same is not None and max(same.values()) == pytest.approx(0.0, abs=1e-9)
    sharp = serving(2, reference_of([request(s, sharp=True) for s in range(100)]))
    traffic(drift, clock, 10, range(60), sharp)
    moved = drift.model_drift()
    assert moved is not None and moved["same_category"] > 0.1
    assert registry.get_sample_value(
        "twinstream_attention_model_drift_js", {"statistic": "same_category"}
    ) == pytest.approx(moved["same_category"])
    other = serving(3, model.manifest.attention | {"sequence": "cluster"})
    traffic(drift, clock, 10, range(60), other)
    assert drift.model_drift() is None  # the serving model attends to another sequence


def test_acknowledging_learns_a_new_baseline_in_every_process(tmp_path: Path) -> None:
    config = replace(QUICK, baseline_path=tmp_path / "drift-baseline.json")
    first, clock, model = pinned(config)
    registry = CollectorRegistry()
    second = AttentionDrift(config, registry, clock=clock)  # another worker process
    traffic(second, clock, config.baseline_s + 20, range(60), model)
    traffic(first, clock, 60, range(60), model, sharp=True)
    assert js_of(first)["same_category"] > 0.1
    assert config.baseline_path is not None
    assert acknowledge(config.baseline_path) == 1
    clock.t += 1
    for drift in (first, second):
        assert drift.traffic_drift() is None and drift.baseline is None
    assert registry.get_sample_value("twinstream_attention_baseline_learning") == 1
    assert registry.get_sample_value("twinstream_attention_window_rows") == 0  # cleared
    traffic(first, clock, config.baseline_s + 20, range(60), model, sharp=True)
    assert max(js_of(first).values()) < 0.05  # the shifted traffic is the new normal
    assert first.baseline is not None and first.baseline.epoch == 1


def test_traffic_drift_is_scored_with_the_anchor_model() -> None:
    """A newer snapshot whose model attends differently (other, larger weights) serves the same
    traffic: re-scored with the anchor (the model the baseline was learnt with), the traffic
    drift stays low; fed the newer model's attention instead, it would not."""
    other = build_model("dare", CFG).eval()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(4.0)
    drift, clock, model = pinned()
    newer = serving(2, None, other)

    def rescore(anchor: Any, rows: list[int], b: Batch) -> tuple[Batch, torch.Tensor]:
        part = replace(
            b.expand_history(len(rows)),
            target_item=b.target_item[rows],
            target_category=b.target_category[rows],
        )
        out = anchor.model(part)
        return part, out.attention

    plain = AttentionDrift(QUICK, CollectorRegistry(), clock=clock)
    traffic(plain, clock, QUICK.baseline_s + 20, range(60), model)
    end = clock.t + 60
    while clock.t < end:
        for u in range(100, 160):
            b = request(u)
            with torch.no_grad():
                att = other(b).attention
                assert att is not None
                drift.observe(newer, b, att, f"u{u}", rescore=lambda a, r, b=b: rescore(a, r, b))
                plain.observe(newer, b, att, f"u{u}")
        clock.t += 10.0
    assert max(js_of(drift).values()) < 0.05, js_of(drift)
    assert max(js_of(plain).values()) > 0.1, js_of(plain)


def test_a_baseline_rolls_forward_after_its_horizon_when_told() -> None:
    drift, clock, model = pinned(replace(QUICK, baseline_roll_s=300.0))
    pinned_at = drift.baseline.pinned_at if drift.baseline else None
    traffic(drift, clock, 300, range(60), model)
    assert drift.baseline is None or drift.baseline.pinned_at != pinned_at


def test_reference_must_use_the_snapshot_binning() -> None:
    ref = reference_dict("recent", np.ones((len(STAT_NAMES), BINS), dtype=np.int64))
    parsed = parse_reference(3, ref)
    assert parsed is not None and parsed.rows == BINS and parsed.version == 3
    assert parse_reference(3, None) is None
    assert parse_reference(3, ref | {"bin_edges": [0.0, 0.5, 1.0]}) is None
    missing = dict(ref["histograms"])
    missing.pop("entropy")
    assert parse_reference(3, ref | {"histograms": missing}) is None


def test_a_request_feeds_at_most_rows_per_request_rows() -> None:
    registry = CollectorRegistry()
    drift = AttentionDrift(replace(QUICK, rows_per_request=8), registry)
    b = random_batch(CFG, batch_size=100, seed=3, min_len=5)
    drift.observe(serving(1, None), b, attention(b))
    assert 0 < drift.rows <= 8
    assert registry.get_sample_value("twinstream_attention_window_rows") == drift.rows


def test_models_without_attention_are_ignored() -> None:
    registry = CollectorRegistry()
    drift = AttentionDrift(DriftConfig(), registry)
    b = random_batch(CFG, batch_size=4, seed=5)
    pooled = build_model("mean", CFG).eval()
    drift.observe(serving(1, None, pooled), b, torch.ones(4, CFG.seq_len))
    assert registry.get_sample_value("twinstream_attention_window_rows") == 0
    assert drift.live_means() is None


def test_live_means_are_the_means_of_the_window_rows() -> None:
    drift = AttentionDrift(replace(QUICK, rows_per_request=40), CollectorRegistry())
    exact = []
    for seed in range(3):
        b = random_batch(CFG, batch_size=40, seed=seed, min_len=5)
        mask, category = attended_sequence(b, "recent")
        exact.append(attention_stats(attention(b), mask, category, b.target_category))
        drift.observe(serving(1, None), b, attention(b))
    means = drift.live_means()
    assert means is not None
    for j, name in enumerate(STAT_NAMES):
        assert means[name] == pytest.approx(float(np.concatenate(exact)[:, j].mean()))


def test_the_anchor_is_a_copy_that_updates_in_place_do_not_reach() -> None:
    """Deltas update the serving model in place (serving/delta_follow.py): the anchor keeps the
    weights and version it was taken with."""
    model = build_model("dare", CFG).eval()
    served = serving(1, None, model)
    drift = AttentionDrift(QUICK, CollectorRegistry())
    b = request(1)
    with torch.inference_mode():
        drift.observe(served, b, model(b).attention, "u1")
        before = [p.clone() for p in model.parameters()]
        for p in model.parameters():
            p.add_(1.0)  # a delta applied in place
        served.version = 2
    anchor = drift._anchor  # the model traffic drift is scored with
    assert anchor is not served and anchor.version == 1
    for p, q in zip(anchor.model.parameters(), before, strict=True):
        assert torch.equal(p, q)


def test_a_restarted_worker_goes_on_with_its_pinned_baseline(tmp_path: Path) -> None:
    """The pinned baseline and its anchor are written beside the acknowledgement file; a new
    monitor (a restarted worker) loads them and compares at once, without learning; after an
    acknowledgement, a new one learns."""
    mapper = FeatureMapper(MapperConfig.for_model(CFG))
    content = SnapshotContent("dare", MODEL, mapper, None, {}, step=1, samples=0)
    snap = load_snapshot(write_snapshot(tmp_path / "snapshots", 1, content).path)
    config = replace(QUICK, baseline_path=tmp_path / "state" / "drift-baseline.json")
    clock = Clock()
    first = AttentionDrift(config, CollectorRegistry(), clock=clock)
    traffic(first, clock, config.baseline_s + 20, range(60), snap)
    assert first.baseline is not None and first._saver is not None
    first._saver.join(timeout=60)
    second = AttentionDrift(config, CollectorRegistry(), clock=clock)  # the restarted worker
    assert second.baseline is not None and second.baseline.pinned_at == first.baseline.pinned_at
    np.testing.assert_array_equal(second.baseline.user_keys, first.baseline.user_keys)
    np.testing.assert_allclose(second.baseline.user_dists, first.baseline.user_dists)
    np.testing.assert_allclose(second.baseline.dists, first.baseline.dists)
    assert second._anchor is not None and second._anchor.version == 1
    traffic(second, clock, 60, range(60), snap, sharp=True)
    assert js_of(second)["same_category"] > 0.05  # against the loaded baseline, no learning
    npz = next((tmp_path / "state" / "drift-pinned").glob("epoch-*/baseline.npz"))
    npz.write_bytes(npz.read_bytes()[:-1] + b"x")  # a damaged file is refused: learn anew
    assert AttentionDrift(config, CollectorRegistry(), clock=clock).baseline is None
    assert config.baseline_path is not None
    acknowledge(config.baseline_path)
    clock.t += 1
    assert AttentionDrift(config, CollectorRegistry(), clock=clock).baseline is None
