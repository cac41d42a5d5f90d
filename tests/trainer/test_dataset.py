"""The DARE offline protocol: splits by position, negatives outside the history, no leakage."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from streaming.sources import EventLog, load_log
from tests.support.events import synthetic_log
from trainer.dataset import DatasetConfig, OfflineDataset, _sample_negatives, build_dataset

TAOBAO = Path(__file__).resolve().parents[3] / "shared/data/taobao_users/UserBehavior.csv"


@pytest.fixture(scope="module")
def log() -> EventLog:
    return synthetic_log()


@pytest.fixture(scope="module")
def ds(log: EventLog) -> OfflineDataset:
    return build_dataset(log, DatasetConfig(seq_len=16, min_events=5))


def user_sequences(ds: OfflineDataset) -> list[np.ndarray]:
    b = ds.behaviours
    return [b.item[b.user_start[u] : b.user_start[u + 1]] for u in range(len(ds.users))]


def test_rows_are_contiguous_with_zero_for_padding(ds: OfflineDataset) -> None:
    b = ds.behaviours
    assert b.item.min() == 1 and b.item.max() == ds.n_items - 1
    assert set(np.unique(b.item)) == set(range(1, ds.n_items))
    assert b.category.min() == 1 and b.category.max() == ds.n_categories - 1


def test_only_behaviour_types_and_active_users_are_kept(log: EventLog, ds: OfflineDataset) -> None:
    clicks = log.type == "click"
    users, counts = np.unique(log.user_id[clicks], return_counts=True)
    assert sorted(ds.users) == sorted(users[counts >= 5])
    assert ds.behaviours.item.shape[0] == counts[counts >= 5].sum()


def test_split_by_position_last_test_second_last_valid(ds: OfflineDataset) -> None:
    b = ds.behaviours
    ends = b.user_start[1:]
    for pos, offset in ((ds.test, 1), (ds.valid, 2)):
        positives = pos.position[pos.label == 1]
        assert sorted(positives) == sorted(ends - offset)  # one target per user
    train_pos = ds.train.position[ds.train.label == 1]
    assert np.all(train_pos < ends[ds.train.user[ds.train.label == 1]] - 2)
    assert np.all(train_pos > b.user_start[ds.train.user[ds.train.label == 1]])  # has a history


def test_k_negatives_per_positive_share_its_history(ds: OfflineDataset) -> None:
    for s in (ds.train, ds.valid, ds.test):
        pos_count = np.bincount(s.position, weights=s.label, minlength=ds.behaviours.item.size)
        neg_count = np.bincount(s.position, weights=1 - s.label, minlength=ds.behaviours.item.size)
        assert np.array_equal(neg_count[pos_count > 0], 2 * pos_count[pos_count > 0])


def test_negatives_exclude_the_whole_user_sequence(ds: OfflineDataset) -> None:
    seqs = user_sequences(ds)
    for s in (ds.train, ds.valid, ds.test):
        for user, item in zip(s.user[s.label == 0], s.item[s.label == 0], strict=True):
            assert item not in seqs[user]


def test_negatives_follow_item_frequency_outside_the_sequence() -> None:
    freq = np.array([0.0, 1.0, 3.0, 6.0])  # row 0 = padding never drawn
    seen = np.array([0 * 4 + 3])  # user 0 has item 3 in its sequence; user 1 has nothing
    user = np.repeat(np.array([0, 1]), 20_000)
    neg = _sample_negatives(user, freq, seen, np.random.default_rng(0))
    share0 = np.bincount(neg[:20_000], minlength=4) / 20_000
    share1 = np.bincount(neg[20_000:], minlength=4) / 20_000
    np.testing.assert_allclose(share0, [0, 0.25, 0.75, 0], atol=0.02)
    np.testing.assert_allclose(share1, [0, 0.1, 0.3, 0.6], atol=0.02)


def test_history_is_point_in_time_and_right_aligned(ds: OfflineDataset) -> None:
    b = ds.behaviours
    s = ds.train.take(np.random.default_rng(3).permutation(len(ds.train))[:64])
    batch = ds.make_batch(s)
    seqs = user_sequences(ds)
    for i in range(64):
        k = int(s.position[i] - b.user_start[s.user[i]])
        expect = seqs[s.user[i]][max(0, k - 16) : k]
        n = len(expect)
        assert torch.equal(batch.hist_item[i, 16 - n :], torch.from_numpy(expect))
        assert not batch.hist_mask[i, : 16 - n].any() and batch.hist_mask[i, 16 - n :].all()
        assert (batch.hist_item[i, : 16 - n] == 0).all()
    assert torch.equal(batch.hist_age[0], torch.arange(15, -1, -1))
    assert batch.user is not None and torch.equal(batch.user, torch.from_numpy(s.user))


def test_sessions_split_on_a_thirty_minute_gap() -> None:
    ts = np.array([0.0, 60, 120, 120 + 1801, 120 + 1900, 9000])
    n = ts.size
    log = EventLog(
        user_id=np.full(n, "u", dtype=object),
        item_id=np.arange(n).astype(str).astype(object),
        category_id=np.array(["a", "b", "a", "c", "a", "b"], dtype=object),
        type=np.full(n, "click", dtype=object),
        ts=ts,
    )
    ds = build_dataset(log, DatasetConfig(seq_len=4, min_events=3, negatives=0))
    assert ds.behaviours.session.tolist() == [0, 0, 0, 1, 1, 2]
    batch = ds.make_batch(ds.test)  # target = 6th event; window = events 2..5, oldest session = 0
    assert batch.hist_session[0].tolist() == [0, 0, 1, 1]


def test_category_clustering_groups_the_window_by_category() -> None:
    cats = ["a", "b", "a", "c", "a", "b", "z"]
    n = len(cats)
    log = EventLog(
        user_id=np.full(n, "u", dtype=object),
        item_id=np.array([f"i{i}" for i in range(n)], dtype=object),
        category_id=np.array(cats, dtype=object),
        type=np.full(n, "click", dtype=object),
        ts=np.arange(n, dtype=np.float64),
    )
    by_category = DatasetConfig(seq_len=8, min_events=3, negatives=0, clustering="category")
    ds = build_dataset(log, replace(by_category, max_clusters=8))
    batch = ds.make_batch(ds.test)  # history: a b a c a b
    item_row = {f"i{i}": int(ds.behaviours.item[i]) for i in range(n)}
    # clusters by recency of their newest member: c (i3), a (i4, 3 members), b (i5, 2 members)
    assert batch.cluster_item[0].tolist() == [item_row["i3"], item_row["i4"], item_row["i5"]]
    assert batch.cluster_size[0].tolist() == [1.0, 3.0, 2.0]
    assert batch.cluster_mask[0].all()
    capped = build_dataset(log, replace(by_category, max_clusters=2))
    assert capped.make_batch(capped.test).cluster_item[0].tolist() == [
        item_row["i4"],
        item_row["i5"],
    ]


def test_dare_train_stride_and_cap() -> None:
    log = synthetic_log(n_users=3, n_events=300, seed=2)
    ds = build_dataset(log, DatasetConfig(seq_len=8, train_stride=5, max_train_targets=4))
    b = ds.behaviours
    pos = ds.train.position[ds.train.label == 1]
    from_end = b.user_start[b.user[pos] + 1] - 1 - pos
    assert sorted(set(from_end.tolist())) == [2, 7, 12, 17]


def test_real_taobao_users_file() -> None:
    if not TAOBAO.exists():
        pytest.skip(f"real data not found at {TAOBAO} (only on the project's shared machines)")
    ds = build_dataset(load_log(TAOBAO, "taobao"), DatasetConfig())
    assert len(ds.test) == 3 * len(ds.users) and ds.n_items > 1000
    batch = next(ds.batches("test", 32))
    assert batch.hist_item.shape == (32, 200) and batch.hist_mask.any(1).all()
