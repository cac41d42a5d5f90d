"""Negatives: drawn by frequency, never from the history nor the target, replayed exactly."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feature_store.negatives import FrequencySampler


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
