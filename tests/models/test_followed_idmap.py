"""A scorer's id map following deltas: after any chain of changes, folded or not, it looks every
id up exactly like a map rebuilt from scratch with the same changes."""

from __future__ import annotations

import numpy as np
import pytest

from models import followed_idmap
from models.embedding import IdMap
from models.followed_idmap import FollowedIdMap


def rebuilt(assigned: dict[int, int]) -> IdMap:
    keys = np.array(sorted(assigned), dtype=np.int64)
    rows = np.array([assigned[k] for k in keys.tolist()], dtype=np.int64)
    return IdMap.for_lookup(IdMap(1_000), keys, rows)


@pytest.mark.parametrize("min_fold", [8, 10**9], ids=["folding", "overlay only"])
def test_a_chain_of_changes_looks_up_like_a_rebuilt_map(
    monkeypatch: pytest.MonkeyPatch, min_fold: int
) -> None:
    monkeypatch.setattr(followed_idmap, "MIN_FOLD", min_fold)
    rng = np.random.default_rng(0)
    truth = {int(k): i + 1 for i, k in enumerate(rng.choice(500, 100, replace=False))}
    followed = FollowedIdMap(rebuilt(truth))
    bases = {id(followed.base)}
    for _ in range(40):
        removed = rng.choice(sorted(truth), 3, replace=False) if truth else []
        for k in removed:
            del truth[int(k)]
        added = np.unique(rng.integers(0, 600, 5))  # new ids, and known ids moved to a new row
        rows = rng.integers(1, 1_000, added.size)
        truth.update(zip(added.tolist(), rows.tolist(), strict=True))
        followed = followed.changed(added, rows, np.sort(np.asarray(removed, dtype=np.int64)))
        bases.add(id(followed.base))
        queries = np.arange(-5, 610)
        want = rebuilt(truth).lookup(queries)
        assert followed.lookup(queries).tolist() == want.tolist()
        assert followed.lookup(queries.reshape(5, -1)).shape == (5, 123)
    keys, rows = followed.assigned()
    assert dict(zip(keys.tolist(), rows.tolist(), strict=True)) == truth
    assert (len(bases) > 1) == (min_fold == 8)  # the overlay folded into new bases, or never


def test_unsorted_changes_are_refused() -> None:
    followed = FollowedIdMap(rebuilt({1: 1}))
    with pytest.raises(ValueError, match="sorted"):
        followed.changed(np.array([5, 3]), np.array([2, 3]), np.array([], dtype=np.int64))
