"""Samples: binary round trip, alignment, negatives, point-in-time features, delayed labels."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.schema import EventType
from feature_store.clustering import ClusterConfig, cluster_dtype
from feature_store.ids import stable_id
from feature_store.samples import (
    FrequencySampler,
    PendingImpressions,
    SampleBuilder,
    SampleConfig,
    decode_samples,
    encode_sample,
    make_targets,
    with_label,
)
from feature_store.state import StateConfig, UserState, behaviour_dtype
from feature_store.store import MemoryStore
from tests.support.events import T0, event


def random_sample(rng: np.random.Generator, n_dense: int, n_targets: int, n_recent: int, n_c: int):
    targets = make_targets(
        rng.integers(1, 1 << 40, n_targets),
        rng.integers(1, 99, n_targets),
        labels=rng.integers(0, 2, n_targets).astype(np.float32),
        dense=rng.random((n_targets, n_dense)).astype(np.float32),
    )
    recent = np.zeros(n_recent, behaviour_dtype(n_dense))
    recent["item"] = rng.integers(1, 1 << 40, n_recent)
    recent["category"] = rng.integers(1, 99, n_recent)
    recent["ts"] = np.sort(rng.random(n_recent)) * 1e4 + T0
    recent["session"] = 3 + np.sort(rng.integers(0, 4, n_recent))
    recent["type"] = rng.integers(0, 5, n_recent)
    recent["dense"] = rng.random((n_recent, n_dense))
    clusters = np.zeros(n_c, cluster_dtype(n_dense))
    clusters["item"] = rng.integers(1, 1 << 40, n_c)
    clusters["category"] = rng.integers(1, 99, n_c)
    clusters["size"] = rng.integers(1, 20, n_c)
    clusters["dense"] = rng.random((n_c, n_dense))
    return targets, recent, clusters


@settings(max_examples=40, deadline=None)
@given(
    n_dense=st.sampled_from([0, 3]),
    shapes=st.lists(
        st.tuples(st.integers(1, 3), st.integers(0, 8), st.integers(0, 6)), min_size=1, max_size=5
    ),
    seed=st.integers(0, 2**16),
)
def test_decode_matches_a_per_element_reference(
    n_dense: int, shapes: list[tuple[int, int, int]], seed: int
) -> None:
    """Encode random samples, decode them as a batch (L=5, C=4) and compare every cell with a
    plain loop: right alignment, truncation to the newest, relative sessions, ages, masks."""
    rng = np.random.default_rng(seed)
    samples = [random_sample(rng, n_dense, *shape) for shape in shapes]
    blobs = [
        encode_sample(user=100 + i, ts=T0 + i, targets=t, recent=r, clusters=c)
        for i, (t, r, c) in enumerate(samples)
    ]
    a = decode_samples(blobs, recent_length=5, max_clusters=4)
    row = 0
    for i, (targets, recent, clusters) in enumerate(samples):
        for t in targets:
            assert (a.user[row], a.ts[row]) == (100 + i, T0 + i)
            assert (a.target_item[row], a.target_category[row]) == (t["item"], t["category"])
            assert a.label[row] == t["label"] and np.array_equal(a.target_dense[row], t["dense"])
            kept = recent[-5:]
            for j in range(5):
                k = j - (5 - kept.shape[0])  # index into kept, negative = padding
                real = k >= 0
                assert a.hist_mask[row, j] == real
                assert a.hist_item[row, j] == (kept["item"][k] if real else 0)
                assert a.hist_ts[row, j] == (kept["ts"][k] if real else 0.0)
                assert a.hist_age[row, j] == (kept.shape[0] - 1 - k if real else 0)
                first = kept["session"][0] if kept.shape[0] else 0
                assert a.hist_session[row, j] == (kept["session"][k] - first if real else 0)
                expected_dense = kept["dense"][k] if real else np.zeros(n_dense)
                assert np.array_equal(a.hist_dense[row, j], expected_dense)
            kept_c = clusters[-4:]
            for j in range(4):
                k = j - (4 - kept_c.shape[0])
                real = k >= 0
                assert a.cluster_mask[row, j] == real
                assert a.cluster_item[row, j] == (kept_c["item"][k] if real else 0)
                assert a.cluster_size[row, j] == (kept_c["size"][k] if real else 0)
            row += 1
    assert a.size == row
    assert a.hist_item.flags.c_contiguous and a.cluster_dense.shape == (row, 4, n_dense)


def test_decode_defaults_and_errors() -> None:
    rng = np.random.default_rng(0)
    a_blob = encode_sample(user=1, ts=T0, targets=random_sample(rng, 0, 1, 2, 3)[0],
                           recent=random_sample(rng, 0, 1, 2, 3)[1],
                           clusters=random_sample(rng, 0, 1, 2, 7)[2])  # fmt: skip
    assert decode_samples([a_blob]).cluster_item.shape == (1, 7)  # C = longest in the batch
    assert decode_samples([]).size == 0
    t2, r2, c2 = random_sample(rng, 2, 1, 2, 3)
    other = encode_sample(user=1, ts=T0, targets=t2, recent=r2, clusters=c2)
    with pytest.raises(ValueError, match="dense widths"):
        decode_samples([a_blob, other])
    with pytest.raises(ValueError):
        decode_samples([b"XX" + a_blob[2:]])
    with pytest.raises(ValueError):
        encode_sample(
            user=1, ts=T0, targets=t2, recent=np.zeros(1, behaviour_dtype(0)), clusters=c2
        )


def test_with_label_patches_only_labels() -> None:
    t, r, c = random_sample(np.random.default_rng(1), 2, 2, 3, 1)
    t["label"] = np.nan
    blob = encode_sample(user=1, ts=T0, targets=t, recent=r, clusters=c)
    labelled = with_label(blob, 1.0)
    assert len(labelled) == len(blob)
    a, b = decode_samples([blob]), decode_samples([labelled])
    assert np.isnan(a.label).all() and b.label.tolist() == [1.0, 1.0]
    assert np.array_equal(a.hist_item, b.hist_item) and np.array_equal(
        a.target_dense, b.target_dense
    )


# ---------------------------------------------------------------- negatives


def test_sampler_draws_in_proportion_to_frequency() -> None:
    s = FrequencySampler()
    counts = {1: 600, 2: 300, 3: 100}
    for item, n in counts.items():
        s.observe_many(np.full(n, item), np.full(n, item * 10))
    draws = np.concatenate([s.sample(2, np.zeros(0, np.int64), key)[0] for key in range(3_000)])
    freq = np.bincount(draws, minlength=4)[1:] / draws.shape[0]
    assert np.allclose(freq, [0.6, 0.3, 0.1], atol=0.03)
    items, cats = s.sample(5, np.zeros(0, np.int64), key=7)
    assert np.array_equal(cats, items * 10)


@settings(max_examples=50, deadline=None)
@given(
    seen=st.lists(st.integers(1, 30), min_size=1, max_size=80),
    history=st.lists(st.integers(1, 30), max_size=300),  # list scan up to 128, then vectorised
    target=st.one_of(st.none(), st.integers(1, 30)),
    key=st.integers(0, 2**62),
)
def test_negatives_never_come_from_the_history_nor_the_target(
    seen: list[int], history: list[int], target: int | None, key: int
) -> None:
    s = FrequencySampler()
    s.observe_many(np.array(seen), np.array(seen))
    items, _ = s.sample(3, np.array(history, dtype=np.int64), key, exclude_item=target)
    banned = set(history) | {target}
    assert not set(items.tolist()) & banned
    allowed = set(seen) - banned
    assert len(items) == (3 if allowed else 0) or set(items.tolist()) <= allowed


def test_sampler_round_trip_draws_the_same() -> None:
    s = FrequencySampler()
    s.observe_many(np.arange(50) % 13, np.arange(50) % 5)
    copy = FrequencySampler.decode(s.encode())
    assert len(copy) == len(s) == 13
    for key in range(20):
        assert np.array_equal(
            copy.sample(4, np.array([1]), key)[0], s.sample(4, np.array([1]), key)[0]
        )
    assert FrequencySampler().sample(2, np.zeros(0, np.int64), 1)[0].shape == (0,)


# ---------------------------------------------------------------- the builder


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


def test_last_touch_attribution() -> None:
    p = PendingImpressions(window_s=100, labeller=lambda blob, label: blob + b"%d" % label)
    p.add_impression("u", "i", None, 0.0, b"A")
    p.add_impression("u", "i", None, 50.0, b"B")
    assert p.add_click("u", "i", None, 60.0) == [b"B1"]
    assert p.add_click("u", "i", None, 150.0) == []  # A's window [0, 100] is over
    assert p.close_expired(1_000.0) == [b"A0"] and len(p) == 0


def test_pending_impressions_persist_through_the_journal() -> None:
    store = MemoryStore()
    labeller = lambda blob, label: blob + b"%d" % label  # noqa: E731
    p = PendingImpressions(window_s=100, labeller=labeller, prefix="pending/0/")
    p.add_impression("u", "i", "r", 0.0, b"A")
    p.add_impression("u", "j", None, 10.0, b"B")
    p.add_click("v", "k", None, 20.0)
    store.write_batch({}, {}, p.drain_changes())
    assert p.add_click("u", "i", "r", 30.0) == [b"A1"]
    store.write_batch({}, {}, p.drain_changes())
    restored = PendingImpressions(window_s=100, labeller=labeller, prefix="pending/0/")
    restored.restore(v for _, v in store.meta_items("pending/0/"))
    assert len(restored) == 2
    assert restored.add_impression("v", "k", None, 15.0, b"C") == [b"C1"]
    assert restored.close_expired(200.0) == [b"B0"] == p.close_expired(200.0)


@pytest.mark.parametrize("fold_every", [1, 7, 1_024])
def test_sampler_is_exact_after_many_items_and_growth(fold_every: int) -> None:
    s = FrequencySampler(capacity=2, fold_every=fold_every)
    rng = np.random.default_rng(0)
    items = rng.integers(0, 500, 5_000)
    s.observe_many(items, items % 7)
    counts = np.bincount(items, minlength=500)
    order = [int(i) for i in dict.fromkeys(items.tolist())]
    assert s.total == 5_000 and s.counts().tolist() == [counts[i] for i in order]
    # every position of the occurrence multiset maps to one item; each item holds count positions
    found = s._items[s._find(list(range(s.total)))]
    assert np.array_equal(np.bincount(found, minlength=500), counts)
    copy = FrequencySampler.decode(s.encode())  # both parts persisted: the same mapping
    assert np.array_equal(copy._items[copy._find(list(range(s.total)))], found)


def test_sampler_reads_the_earlier_counts_only_format() -> None:
    items, cats, counts = np.array([5, 9]), np.array([1, 2]), np.array([3, 1])
    old = struct.pack("<q", 2) + b"".join(a.astype("<i8").tobytes() for a in (items, cats, counts))
    s = FrequencySampler.decode(old)
    assert s.total == 4 and s.counts().tolist() == [3, 1]
    assert sorted(s._items[s._find([0, 1, 2, 3])].tolist()) == [5, 5, 5, 9]


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
            assert state.maybe_recluster(ClusterConfig())
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
