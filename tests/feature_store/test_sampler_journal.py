"""SamplerJournal: checkpoints in parts, deltas between them, the earlier single key, and a
bounded number of deltas across restarts."""

from __future__ import annotations

import numpy as np

from feature_store.negatives import FrequencySampler
from feature_store.sampler_journal import SamplerJournal
from feature_store.store import StateStore


def observe(sampler: FrequencySampler, items: list[int]) -> None:
    sampler.observe_many(np.array(items), np.array(items) % 5)


def keys(store: StateStore, prefix: str = "sampler/0") -> list[str]:
    return [key for key, _ in store.meta_items(prefix)]


def test_a_checkpoint_is_split_into_parts_and_a_smaller_one_deletes_the_extra_parts(
    store: StateStore,
) -> None:
    journal = SamplerJournal(0, checkpoint_every=1, part_bytes=100)
    sampler = journal.restore(store)
    observe(sampler, [i % 10 for i in range(1_000)])  # 1,000 occurrences not folded yet
    big = sampler.encode()
    store.write_batch({}, {0: 0}, journal.changes(sampler, 0))
    assert len(keys(store)) == -(-len(big) // 100)  # every part at most 100 bytes
    assert SamplerJournal(0, 1).restore(store).encode() == big

    observe(sampler, list(range(24)))  # the 1,024th occurrence folds them: a smaller encoding
    small = sampler.encode()
    store.write_batch({}, {0: 1}, journal.changes(sampler, 1))
    assert len(small) < len(big) and len(keys(store)) == -(-len(small) // 100)
    assert SamplerJournal(0, 1).restore(store).encode() == small


def test_the_earlier_single_key_is_read_and_replaced_at_the_next_checkpoint(
    store: StateStore,
) -> None:
    earlier = FrequencySampler()
    observe(earlier, [1, 2, 2, 3])
    store.write_batch({}, {0: 9}, {"sampler/0": earlier.encode()})
    journal = SamplerJournal(0, checkpoint_every=2)
    sampler = journal.restore(store)
    assert sampler.encode() == earlier.encode()
    for offset in (10, 11):
        observe(sampler, [4])
        store.write_batch({}, {0: offset}, journal.changes(sampler, offset))
    assert keys(store) == ["sampler/0/c/000000"]  # the earlier key and the delta deleted
    assert SamplerJournal(0, 2).restore(store).counts().tolist() == [1, 2, 1, 2]


def test_deltas_stay_fewer_than_checkpoint_every_across_restarts(store: StateStore) -> None:
    for offset in range(7):  # a restart before every batch
        journal = SamplerJournal(0, checkpoint_every=3)
        sampler = journal.restore(store)
        observe(sampler, [offset])
        store.write_batch({}, {0: offset}, journal.changes(sampler, offset))
        assert len(keys(store, "sampler/0/d/")) < 3
    assert SamplerJournal(0, 3).restore(store).counts().tolist() == [1] * 7


def test_a_batch_that_observed_nothing_writes_nothing(store: StateStore) -> None:
    journal = SamplerJournal(0, checkpoint_every=1)
    sampler = journal.restore(store)
    assert journal.changes(sampler, 5) == {} and journal.changes(sampler, None) == {}
