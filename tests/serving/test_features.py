"""FeatureMapper: raw stable ids → embedding rows, learn vs lookup, padding, expiry, state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from feature_store.cluster_leaves import cluster_dtype
from feature_store.sample_format import SampleArrays, decode_samples, encode_sample, make_targets
from feature_store.state_format import behaviour_dtype
from models import ModelConfig
from serving.features import FeatureMapper, MapperConfig, raw_ids, select_rows


def sample(
    user: int,
    targets: list[int],
    history: list[int],
    labels: list[float] | None = None,
    clusters: list[int] | None = None,
) -> bytes:
    recent = np.zeros(len(history), behaviour_dtype(0))
    recent["item"], recent["category"] = history, [h % 7 for h in history]
    recent["session"] = np.arange(len(history)) // 2
    clus = np.zeros(len(clusters or []), cluster_dtype(0))
    if clusters:
        clus["item"], clus["category"], clus["size"] = clusters, 3, 4
    labels = labels if labels is not None else [1.0] + [0.0] * (len(targets) - 1)
    cats = [t % 7 for t in targets]
    return encode_sample(
        user=user,
        ts=1e9,
        targets=make_targets(targets, cats, labels=labels),
        recent=recent,
        clusters=clus,
    )


def decode(blobs: list[bytes], length: int = 4) -> SampleArrays:
    return decode_samples(blobs, recent_length=length)


def mapper(
    n_items: int = 50, n_categories: int = 10, min_count: int = 1, ttl: int | None = None
) -> FeatureMapper:
    return FeatureMapper(MapperConfig(n_items, n_categories, 4, 0, min_count, ttl))


def test_lookup_only_maps_unknown_ids_to_row_zero_and_learns_nothing() -> None:
    m = mapper()
    batch = m.to_batch(decode([sample(1, [900, 901], [500, 501])]), learn=False)
    assert batch.target_item.tolist() == [0, 0]
    assert not batch.hist_item.any()
    assert len(m.items) == 0 and len(m.drain_new_rows()) == 0


def test_learning_gives_every_real_id_its_own_row_and_padding_stays_zero() -> None:
    m = mapper()
    arrays = decode([sample(7, [900, 901, 902], [500, 501], clusters=[600])])
    batch = m.to_batch(arrays, learn=True)
    rows = {int(r) for r in batch.target_item} | {int(r) for r in batch.hist_item[batch.hist_mask]}
    assert 0 not in rows and len(rows) == 5  # 3 targets + 2 behaviours, all distinct
    assert not batch.hist_item[~batch.hist_mask].any()  # left padding stays on row 0
    assert not batch.hist_category[~batch.hist_mask].any()
    assert batch.cluster_item[batch.cluster_mask].ne(0).all()
    assert batch.label is not None and batch.label.tolist() == [1.0, 0.0, 0.0]
    assert batch.user is not None and batch.user.tolist() == [7, 7, 7]
    again = m.to_batch(arrays, learn=False)  # lookup now finds the same rows
    assert torch.equal(again.target_item, batch.target_item)
    assert torch.equal(again.hist_item, batch.hist_item)


def test_new_rows_accumulate_until_drained() -> None:
    m = mapper()
    m.to_batch(decode([sample(1, [900], [500])]), learn=True)
    m.to_batch(decode([sample(1, [901], [500])]), learn=True)
    new = m.drain_new_rows()
    assert sorted(new.items.tolist()) == [1, 2, 3]  # 900, 500, then 901
    assert len(m.drain_new_rows()) == 0


def test_expired_ids_free_rows_that_are_handed_out_again() -> None:
    m = mapper(n_items=4, ttl=1)
    m.to_batch(decode([sample(1, [900], [500])]), learn=True)
    m.drain_new_rows()
    batch = m.to_batch(decode([sample(1, [901], [501])]), learn=True)  # 900, 500 expire
    assert sorted(m.drain_new_rows().items.tolist()) == [1, 2]  # their rows, recycled
    assert {int(batch.target_item[0]), int(batch.hist_item[0, -1])} == {1, 2}
    assert m.items.lookup(np.array([900, 500])).tolist() == [0, 0]


def test_raw_ids_skip_padding_and_count_every_real_occurrence() -> None:
    arrays = decode([sample(1, [900, 901], [500])])
    ids = raw_ids(arrays)
    assert sorted(ids.items.tolist()) == [500, 500, 900, 901]  # history repeats per target row
    assert ids.items.shape == ids.categories.shape


def test_longer_histories_keep_the_newest_behaviours_with_sessions_rebased() -> None:
    m = mapper()
    arrays = decode([sample(1, [900], [10, 11, 12, 13, 14, 15])], length=6)
    batch = m.to_batch(arrays, learn=True)
    assert batch.hist_item.shape == (1, 4)
    kept = m.items.lookup(np.array([12, 13, 14, 15]))
    assert batch.hist_item[0].tolist() == kept.tolist()
    assert batch.hist_session[0].tolist() == [0, 0, 1, 1]  # sessions 1,1,2,2 re-based to 0
    assert batch.hist_age[0].tolist() == [3, 2, 1, 0]


def test_dense_width_must_match_the_model() -> None:
    m = FeatureMapper(MapperConfig(n_items=10, n_categories=5, dense_features=2))
    with pytest.raises(ValueError, match="dense features"):
        m.to_batch(decode([sample(1, [900], [500])]), learn=False)


def test_unlabelled_requests_give_a_batch_without_labels() -> None:
    arrays = decode([sample(1, [900, 901], [500], labels=[np.nan, np.nan])])
    assert mapper().to_batch(arrays, learn=False).label is None


def test_select_rows_keeps_every_field_aligned() -> None:
    arrays = decode([sample(1, [900, 901], [500]), sample(2, [902], [501, 502])])
    kept = select_rows(arrays, np.array([False, True, True]))
    assert kept.size == 2 and kept.user.tolist() == [1, 2]
    assert kept.hist_item.shape == (2, 4) and kept.target_item.tolist() == [901, 902]


def test_state_dict_round_trip_gives_the_same_mapping() -> None:
    m = mapper(min_count=2)
    arrays = decode([sample(1, [900, 901], [500, 501]), sample(2, [900], [500])])
    m.to_batch(arrays, learn=True)
    copy = mapper(min_count=2)
    copy.load_state_dict(m.state_dict())
    for a, b in zip(
        vars(m.to_batch(arrays, learn=False)).values(),
        vars(copy.to_batch(arrays, learn=False)).values(),
        strict=True,
    ):
        assert a is None or torch.equal(a, b)


def test_for_model_takes_capacities_and_shape_from_the_model_config() -> None:
    cfg = ModelConfig(n_items=100, n_categories=9, dim=4, seq_len=30, dense_features=1)
    mc = MapperConfig.for_model(cfg, min_count=3, ttl=10)
    assert (mc.n_items, mc.n_categories, mc.seq_len, mc.dense_features) == (100, 9, 30, 1)
    assert MapperConfig.from_dict(mc.to_dict()) == mc


def test_one_row_batches_convert_despite_packed_record_strides() -> None:
    batch = mapper().to_batch(decode([sample(1, [900], [500])]), learn=True)
    assert batch.size == 1 and batch.target_dense.shape == (1, 0)


@pytest.mark.parametrize("min_count,ttl", [(1, None), (2, None), (1, 2)])
def test_refresh_after_observe_equals_a_fresh_lookup(min_count: int, ttl: int | None) -> None:
    m = mapper(n_items=24, n_categories=6, min_count=min_count, ttl=ttl)  # small: rows recycle
    rng = np.random.default_rng(0)
    for step in range(12):
        blobs = [
            sample(
                u,
                list(rng.integers(900, 930, 3)),
                list(rng.integers(500, 530, 5)),
                clusters=[int(rng.integers(600, 610))],
            )
            for u in range(4)
        ]
        arrays = decode(blobs, length=6)  # longer than seq_len: refresh cuts the same way
        scored = m.to_batch(arrays, learn=False)
        m.observe(m.raw_ids(arrays))
        fresh = m.to_batch(arrays, learn=False)
        refreshed = m.refresh(scored, arrays)
        for name in (
            "target_item",
            "hist_item",
            "cluster_item",
            "target_category",
            "hist_category",
        ):
            assert torch.equal(getattr(refreshed, name), getattr(fresh, name)), (step, name)
