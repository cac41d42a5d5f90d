"""Stable ids: numeric ids keep their value, others hash into a disjoint range."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from feature_store.ids import (
    HASH_BIT,
    NUMERIC_LIMIT,
    hash_draws,
    splitmix64,
    splitmix64_int,
    stable_id,
    stable_ids,
)

PINNED_USER_42 = 7417400528562987119
PINNED_ABC = 6455300059550759896


def test_decimal_ids_map_to_themselves() -> None:
    assert [stable_id(s) for s in ("0", "7", "2156592", str(NUMERIC_LIMIT - 1))] == [
        0,
        7,
        2156592,
        NUMERIC_LIMIT - 1,
    ]


def test_non_canonical_ids_are_hashed_into_the_upper_range() -> None:
    for s in ("007", "00", "-1", "+1", " 1", "1.0", str(NUMERIC_LIMIT), "١٢", "", "user", "1\x002"):
        key = stable_id(s)
        assert HASH_BIT <= key < 2**63, s
    assert stable_id("007") != stable_id("7")


def test_hash_is_pinned() -> None:
    """Changing the hash would silently remap every stored id: these values must never move."""
    assert stable_id("user-42") == PINNED_USER_42
    assert stable_id("abc") == PINNED_ABC


@given(st.lists(st.one_of(st.text(max_size=24), st.integers(0, 2**64).map(str)), max_size=40))
def test_vectorised_equals_scalar(values: list[str]) -> None:
    assert stable_ids(values).tolist() == [stable_id(v) for v in values]


def test_vectorised_accepts_numpy_string_arrays() -> None:
    arr = np.array(["5", "x", "0012", "18446744073709551615"])
    assert stable_ids(arr).tolist() == [stable_id(str(v)) for v in arr]
    assert stable_ids([]).shape == (0,)


def test_no_collisions_among_200k_hashed_ids() -> None:
    keys = stable_ids([f"u{i}" for i in range(200_000)])
    assert np.unique(keys).shape[0] == keys.shape[0]


def test_splitmix_scalar_equals_vectorised() -> None:
    x = np.array([0, 1, 2**63, 2**64 - 1, 12345678901234567], dtype=np.uint64)
    assert splitmix64(x).tolist() == [splitmix64_int(int(v)) for v in x]


def test_hash_draws_are_deterministic_and_in_range() -> None:
    a = np.array(hash_draws(key=99, start=0, n=10_000, high=7))
    assert a.tolist() == hash_draws(key=99, start=0, n=10_000, high=7)
    assert a.min() == 0 and a.max() == 6
    assert np.allclose(np.bincount(a) / a.shape[0], 1 / 7, atol=0.02)
