"""Raw string ids -> stable int64 keys.

Canonical decimal strings below 2**62 keep their value, so Taobao and MovieLens ids stay readable in
state dumps and samples. Everything else (names, UUIDs, ``"007"`` with its leading zero, numbers of
2**62 and above) maps to a 64-bit blake2b digest with bit 62 set and bit 63 clear, i.e. a value in
[2**62, 2**63): the two ranges never meet, so a hashed id never equals a numeric one.

Collision rate: hashed ids carry 62 random bits, so among ``n`` distinct non-numeric strings the
expected number of colliding pairs is n(n-1)/2 / 2**62 ~ n**2 / 2**63: about 1e-7 for a million
strings, 1e-1 for a billion. Numeric ids never collide.

>>> stable_id("2156592")
2156592
>>> stable_id("user-42") >= 2**62
True
>>> stable_id("007") == stable_id("7")
False
>>> stable_ids(["1", "abc", "3"]).tolist() == [1, stable_id("abc"), 3]
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import lru_cache

import numpy as np
import numpy.typing as npt

NUMERIC_LIMIT = 1 << 62
HASH_BIT = 1 << 62
_HASH_MASK = HASH_BIT - 1
_MAX_DIGITS = 19  # 2**62 has 19 digits
_ZERO, _NINE = ord("0"), ord("9")

Int64Array = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]


def is_canonical_decimal(s: str) -> bool:
    """ASCII digits, no sign, no leading zero (except ``"0"`` itself), below 2**62."""
    if not (s.isascii() and s.isdigit()) or len(s) > _MAX_DIGITS:
        return False
    return (s[0] != "0" or s == "0") and int(s) < NUMERIC_LIMIT


@lru_cache(maxsize=1 << 14)  # an event id: hashed for a batch's dedupe check, then remembered
def hash_id(s: str) -> int:
    """The hashed key of ``s``: blake2b-64 with bit 62 set, bit 63 clear (a positive int64)."""
    digest = hashlib.blake2b(s.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return (int.from_bytes(digest, "little") & _HASH_MASK) | HASH_BIT


@lru_cache(maxsize=1 << 16)
def stable_id(s: str) -> int:
    """Map one raw id to its int64 key (see the module docstring). Cached: ids repeat."""
    return int(s) if is_canonical_decimal(s) else hash_id(s)


def stable_ids(values: Iterable[str] | npt.NDArray[np.str_]) -> Int64Array:
    """Vectorised :func:`stable_id`: the numeric check and parse run in numpy, only the
    non-numeric strings are hashed one by one."""
    raw = values.reshape(-1).tolist() if isinstance(values, np.ndarray) else list(values)
    arr = np.asarray(raw, dtype=np.str_).reshape(-1)
    out = np.empty(arr.shape[0], dtype=np.int64)
    numeric = _numeric_mask(arr)
    numeric &= np.fromiter(map(len, raw), np.int64, len(raw)) == np.char.str_len(arr)  # NUL tails
    if numeric.any():
        out[numeric] = arr[numeric].astype(np.uint64).astype(np.int64)
    for i in np.flatnonzero(~numeric):
        out[i] = hash_id(str(raw[i]))
    return out


def _numeric_mask(arr: npt.NDArray[np.str_]) -> npt.NDArray[np.bool_]:
    """Which entries are canonical decimals below 2**62, from the UCS-4 code points."""
    width = arr.dtype.itemsize // 4
    if arr.shape[0] == 0 or width == 0:
        return np.zeros(arr.shape[0], dtype=bool)
    codes = arr.view(np.uint32).reshape(arr.shape[0], width)  # (n, width), 0-padded on the right
    digits = (codes >= _ZERO) & (codes <= _NINE)
    length = np.cumprod(digits, axis=1).sum(axis=1)  # leading digits
    ok = (length == (codes != 0).sum(axis=1)) & (length > 0) & (length <= _MAX_DIGITS)
    ok &= (codes[:, 0] != _ZERO) | (length == 1)
    ok[ok] &= arr[ok].astype(np.uint64) < np.uint64(NUMERIC_LIMIT)
    return ok


_M64 = (1 << 64) - 1


def splitmix64(x: U64) -> U64:
    """The splitmix64 finaliser, elementwise: a fast, well-mixed stateless hash of uint64s."""
    z = (x + np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64, copy=False)
    z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)).astype(np.uint64, copy=False)
    z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)).astype(np.uint64, copy=False)
    return (z ^ (z >> np.uint64(31))).astype(np.uint64, copy=False)


def splitmix64_int(x: int) -> int:
    """:func:`splitmix64` of one Python int (same bits; no numpy overhead for a few values)."""
    z = (x + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


DRAWS_HIGH_LIMIT = 1 << 37  # hash_draws_many multiplies in two halves: exact below this


def hash_draws_many(keys: U64, start: int, n: int, highs: Int64Array) -> Int64Array:
    """:func:`hash_draws` of many keys at once, one row of ``n`` draws per key (its ``high`` in
    ``highs``), the same values: the 53 hashed bits times ``high``, shifted down by 53, computed
    in two halves so that no product passes 64 bits (``highs`` below ``DRAWS_HIGH_LIMIT``).

    >>> keys = np.array([7, 2**62 + 5], np.uint64)
    >>> hash_draws_many(keys, 2, 3, np.array([10, 10**9])).tolist() == [
    ...     hash_draws(7, 2, 3, 10), hash_draws(2**62 + 5, 2, 3, 10**9)]
    True
    """
    if highs.shape[0] and int(highs.max()) >= DRAWS_HIGH_LIMIT:
        raise ValueError(f"hash_draws_many needs every high below {DRAWS_HIGH_LIMIT}")
    counters = keys[:, None] + np.arange(start, start + n, dtype=np.uint64)[None, :]
    bits = splitmix64(counters) >> np.uint64(11)  # 53 bits
    high = highs.astype(np.uint64)[:, None]
    upper, lower = bits >> np.uint64(26), bits & np.uint64((1 << 26) - 1)
    return ((upper * high + ((lower * high) >> np.uint64(26))) >> np.uint64(27)).astype(np.int64)


def hash_draws(key: int, start: int, n: int, high: int) -> list[int]:
    """``n`` integers in [0, high) determined by (``key``, ``start + i``): counter-based random
    draws, so a replay of the same event draws the same values without any generator state.
    Meant for a few draws at a time (pure Python)."""
    return [
        ((splitmix64_int((key + i) & _M64) >> 11) * high) >> 53 for i in range(start, start + n)
    ]
