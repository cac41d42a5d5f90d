"""Sample messages: binary round trip against a per-element reference, alignment, errors, labels."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feature_store.cluster_leaves import cluster_dtype
from feature_store.sample_format import (
    decode_samples,
    empty_history,
    encode_sample,
    make_targets,
    pack_history,
    with_label,
)
from feature_store.state import StateConfig, UserState
from feature_store.state_format import behaviour_dtype
from tests.support.events import T0


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


def test_version_1_messages_still_decode_and_relabel() -> None:
    """Samples written before version 2 (no singletons count in the header) decode as before."""
    import struct

    t, r, c = random_sample(np.random.default_rng(5), 2, 3, 6, 4)
    head = struct.pack("<2sBBHHIIqd", b"TS", 1, 0, 2, 3, 6, 4, 77, T0)
    v1 = head + t.tobytes() + r.tobytes() + c.tobytes()
    v2 = encode_sample(user=77, ts=T0, targets=t, recent=r, clusters=c)
    assert v1[2] == 1 and v2[2] == 2
    a, b = decode_samples([v1, with_label(v1, 0.5)], 5, 4), decode_samples([v2, v2], 5, 4)
    assert a.cluster_item.tolist() == b.cluster_item.tolist()
    assert a.hist_dense.tolist() == b.hist_dense.tolist()
    assert a.label.tolist()[3:] == [0.5] * 3


def _v1(user: int, ts: float, t: np.ndarray, r: np.ndarray, c: np.ndarray, n_dense: int) -> bytes:
    """The same sample in version 1's full rows: the reference of what must decode."""
    import struct

    head = struct.pack("<2sBBHHIIqd", b"TS", 1, 0, n_dense, len(t), len(r), len(c), user, ts)
    return head + t.tobytes() + r.tobytes() + c.tobytes()


@pytest.mark.parametrize("n_dense", [0, 2])
@pytest.mark.parametrize("ids", ["small", "no_clusters", "hashed_item", "hashed_category"])
def test_long_histories_go_in_narrow_rows_when_they_fit_and_decode_the_same(
    n_dense: int, ids: str
) -> None:
    """200 recent behaviours and 150 clusters: narrow rows (a third fewer bytes) when every id
    fits in 32 bits, full rows otherwise; the decoded batch equals the full-row reference either
    way, times, sessions, ages and dense features included."""
    rng = np.random.default_rng(9)
    t, r, c = random_sample(rng, n_dense, 3, 200, 150)
    ts = T0 + 20_000.0
    r["item"] %= 2**31
    c["item"] %= 2**31
    if ids == "no_clusters":
        c = c[:0]
    if ids == "hashed_item":
        r["item"][5] = 2**62 + 7
    if ids == "hashed_category":
        c["category"][7] = 2**32
    blob = encode_sample(user=3, ts=ts, targets=t, recent=r, clusters=c, narrow_ids=True)
    reference = _v1(3, ts, t, r, c, n_dense)
    narrowed = ids in ("small", "no_clusters")
    assert (blob[3] == 1) is narrowed and (len(blob) < 0.8 * len(reference)) is narrowed
    got, want = decode_samples([blob], 200), decode_samples([reference], 200)
    for name in want.__dataclass_fields__:
        assert np.array_equal(getattr(got, name), getattr(want, name), equal_nan=True), name


@pytest.mark.parametrize("dense_features", [(), ("price", "dwell")])
@pytest.mark.parametrize("narrow_ids", [False, True])
def test_the_shared_empty_history_is_a_new_states_packed_history(
    dense_features: tuple[str, ...], narrow_ids: bool
) -> None:
    """BatchSamples gives a state with nothing logged the shared empty_history instead of
    packing its sample_history: the two are the same history, byte for byte."""
    config = StateConfig(dense_features=dense_features)
    state = UserState.empty(config)
    recent, clusters, tail, ends_recent = state.sample_history(50, as_of=T0)
    packed = pack_history(
        recent, clusters, tail, ends_recent, n_dense=config.n_dense, narrow_ids=narrow_ids
    )
    shared = empty_history(config.n_dense, narrow_ids)
    assert shared == packed
    assert shared.message(7, T0, 1, b"t" * 9) == packed.message(7, T0, 1, b"t" * 9)
