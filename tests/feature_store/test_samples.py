"""The sample builder: point-in-time features, K negatives, explicit labels, the fast encoding."""

from __future__ import annotations

import numpy as np
import pytest

from contracts.schema import EventType
from feature_store.cluster_config import ClusterConfig
from feature_store.ids import stable_id
from feature_store.sample_format import decode_samples, encode_sample, make_targets
from feature_store.samples import SampleBuilder, SampleConfig
from feature_store.state import StateConfig, UserState
from tests.support.events import T0, event


def test_implicit_samples_are_point_in_time_with_k_negatives() -> None:
    scfg = StateConfig(recent_length=4, dense_features=("dwell",))
    builder = SampleBuilder(SampleConfig(recent_length=4, negatives=2), scfg)
    states: dict[str, UserState] = {}
    blobs, expected = [], []
    rng = np.random.default_rng(3)
    for i in range(300):
        user = f"u{rng.integers(0, 5)}"
        e = event(10.0 * i, item=str(rng.integers(0, 40)), user=user, features={"dwell": float(i)})
        state = states.setdefault(user, UserState.empty(scfg))
        expected.append((state.recent(4).copy(), set(state.log["item"].tolist()), e))
        blobs += builder.samples_for(state, e)
        state.apply(e, scfg)
    a = decode_samples(blobs, recent_length=4)
    assert a.size <= 3 * len(expected) and a.size > 2 * len(expected)
    row = 0
    for recent, history, e in expected:
        n_rows = 1 + int((a.ts[row + 1 : row + 3] == e.ts).sum()) if row + 1 < a.size else 1
        mask = a.hist_mask[row]
        assert a.hist_item[row][mask].tolist() == recent["item"].tolist()  # state before the event
        assert a.label[row] == 1.0 and a.target_item[row] == stable_id(e.item_id)
        negatives = a.target_item[row + 1 : row + n_rows].tolist()
        assert a.label[row + 1 : row + n_rows].tolist() == [0.0] * len(negatives)
        assert not set(negatives) & (history | {stable_id(e.item_id)})
        assert (a.target_dense[row : row + n_rows] == e.features["dwell"]).all()  # no label leak
        row += n_rows
    assert row == a.size


def test_impressions_are_ignored_in_implicit_mode() -> None:
    builder = SampleBuilder(SampleConfig(), StateConfig())
    assert (
        builder.samples_for(UserState.empty(StateConfig()), event(0.0, kind=EventType.IMPRESSION))
        == []
    )


def explicit_builder() -> tuple[SampleBuilder, StateConfig]:
    scfg = StateConfig(recent_length=3)
    return SampleBuilder(SampleConfig(mode="explicit", attribution_window_s=1800), scfg), scfg


def test_explicit_click_within_window_labels_the_impression_one() -> None:
    builder, scfg = explicit_builder()
    state = UserState.empty(scfg)
    for i in range(2):
        state.apply(event(float(i), item=f"h{i}"), scfg)
    imp = event(100.0, item="x", kind=EventType.IMPRESSION, request_id="r1")
    assert builder.samples_for(state, imp) == []
    state.apply(imp, scfg)
    state.apply(event(200.0, item="later"), scfg)  # must not leak into the impression's features
    click = event(1_000.0, item="x", request_id="r1")
    out = builder.samples_for(state, click)
    a = decode_samples(out, recent_length=3)
    assert a.label.tolist() == [1.0] and a.ts.tolist() == [T0 + 100.0]
    assert a.hist_item[0][a.hist_mask[0]].tolist() == [stable_id("h0"), stable_id("h1")]


def test_explicit_window_close_request_mismatch_and_late_impression() -> None:
    builder, scfg = explicit_builder()
    state = UserState.empty(scfg)
    builder.samples_for(state, event(0.0, item="x", kind=EventType.IMPRESSION, request_id="r1"))
    assert builder.samples_for(state, event(10.0, item="x", request_id="r2")) == []  # other request
    assert builder.close_expired(T0 + 1_800.0) == []  # window [0, 1800] still open
    closed = decode_samples(builder.close_expired(T0 + 1_800.5))
    assert closed.label.tolist() == [0.0]
    # a click that arrives before its (late) impression still labels it 1
    assert builder.samples_for(state, event(3_000.0, item="y")) == []
    late = builder.samples_for(state, event(2_900.0, item="y", kind=EventType.IMPRESSION))
    assert decode_samples(late).label.tolist() == [1.0]


@pytest.mark.parametrize("at", [1e4, 35.0])  # after the log; between its 4th and 5th behaviours
@pytest.mark.parametrize("behaviours", [0, 6, 70])  # 70: clusters, then clusters of one
@pytest.mark.parametrize("dense_features", [(), ("dwell", "price")])
def test_builder_encoding_equals_the_structured_reference(
    dense_features: tuple[str, ...], behaviours: int, at: float
) -> None:
    """The per-event fast path (struct packing) writes exactly the bytes of the numpy layout."""
    scfg = StateConfig(recent_length=4, dense_features=dense_features)
    builder = SampleBuilder(SampleConfig(recent_length=4), scfg)
    state = UserState.empty(scfg)
    for i in range(behaviours):
        state.apply(event(10.0 * i, item=str(i), features={"dwell": 1.5 * i}), scfg)
        if i == 64:
            assert state.maybe_recluster(ClusterConfig(recluster_every=64))
    assert 0 < state.cluster_state.upto < behaviours or behaviours < 64
    e = event(at, item="9", features={"dwell": 2.5, "price": 7.0})
    negatives, neg_cats = np.array([3, 11]), np.array([4, 12])
    for label in (1.0, float("nan")):
        blob = builder.encode(state, e, negatives, neg_cats, label)
        n_dense = len(dense_features)
        dense = np.tile(scfg.dense(e), (3, 1)) if n_dense else None
        targets = make_targets(
            [stable_id("9"), 3, 11],
            [stable_id("10"), 4, 12],
            labels=np.array([label, 0.0, 0.0], np.float32),
            dense=dense,
        )
        reference = encode_sample(
            user=stable_id("u1"), ts=e.ts, targets=targets,
            recent=state.log[state.log["ts"] <= e.ts][-4:], clusters=state.clusters(),
        )  # fmt: skip
        assert blob == reference


@pytest.mark.parametrize("at", [1e4, 35.0])  # after the log; a late event, between behaviours
def test_a_sample_sends_the_behaviours_since_clustering_once_and_decodes_the_same(
    at: float,
) -> None:
    """The behaviours logged since the last clustering end the recent sequence: the sample
    carries them once (version 2's singletons) unless a late event cut them off, and decodes to
    exactly what the whole cluster sequence sent explicitly decodes to."""
    scfg = StateConfig(recent_length=8)
    builder = SampleBuilder(SampleConfig(recent_length=8), scfg)
    state = UserState.empty(scfg)
    for i in range(70):
        state.apply(event(10.0 * i, item=str(i)), scfg)
        if i == 64:
            assert state.maybe_recluster(ClusterConfig(recluster_every=64))
    tail = state.total - state.cluster_state.upto
    assert 0 < tail <= 8
    e = event(at, item="9")
    blob = builder.encode(state, e, np.array([3]), np.array([4]), 1.0)
    targets = make_targets([stable_id("9"), 3], [stable_id("10"), 4], labels=[1.0, 0.0])
    reference = encode_sample(
        user=stable_id("u1"), ts=e.ts, targets=targets,
        recent=state.log[state.log["ts"] <= e.ts][-8:], clusters=state.clusters(),
    )  # fmt: skip
    singles = tail if at > 1e3 else 0
    assert len(reference) - len(blob) == 20 * singles  # a cluster row: 20 bytes
    got, want = decode_samples([blob], 8), decode_samples([reference], 8)
    for name in ("cluster_item", "cluster_category", "cluster_size", "cluster_mask", "hist_item"):
        assert getattr(got, name).tolist() == getattr(want, name).tolist()
    assert got.cluster_item.shape[1] == state.cluster_count
