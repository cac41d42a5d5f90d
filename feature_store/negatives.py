"""Negative sampling: items drawn in proportion to their frequency, never from the history.

In implicit mode every positive behaviour gets K negatives: :class:`FrequencySampler` counts the
items seen in a partition and draws by frequency, excluding the user's whole lifelong log and the
target. Draws are counter-based hashes of :func:`event_key`, so a replay of an event draws the
same negatives.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from contracts.schema import Event
from feature_store.ids import hash_draws, hash_id, splitmix64_int
from feature_store.item_index import ItemIndex

I64 = npt.NDArray[np.int64]


class FrequencySampler:
    """Items seen in a partition with their counts; draws items in proportion to frequency.

    The multiset of every occurrence so far is split in two: the counts as of the last *fold*
    (a cumulative array, searched with ``np.searchsorted``) and the occurrences since (a list).
    A draw is a uniform position in that multiset: below the folded total it lands on an item by
    its folded count, above it on one recent occurrence, so every draw uses the exact current
    counts at O(1) per update. The list is folded into the array once it holds ``fold_every``
    occurrences or a sixteenth of the distinct items (amortised O(1)). Draws are counter-based
    hashes of a key (:func:`event_key`); the fold schedule depends only on the sequence of
    observations, and :meth:`encode` keeps both parts, so a replay from persisted state draws
    exactly the same items. With :attr:`journal` set to a list, each observation is recorded
    there as it is made (item, then category): replaying those pairs with :meth:`observe_many`
    rebuilds the same sampler (:mod:`feature_store.sampler_journal` persists them per batch).

    >>> s = FrequencySampler()
    >>> s.observe_many(np.array([1, 1, 1, 2, 3]), np.array([10, 10, 10, 20, 30]))
    >>> items, cats = s.sample(2, exclude=np.array([1]), key=12345)
    >>> sorted(set(items.tolist()) - {2, 3}), len(items), s.total
    ([], 2, 5)
    """

    MAGIC = b"FSv2"

    def __init__(self, capacity: int = 64, fold_every: int = 1_024) -> None:
        self._index: dict[int, int] = {}
        self._items = np.zeros(capacity, np.int64)
        self._cats = np.zeros(capacity, np.int64)
        self._folded = np.zeros(capacity, np.int64)  # counts as of the last fold
        self._cum = np.zeros(0, np.int64)  # cumsum of _folded[:n] at the last fold
        self._folded_total = 0  # _cum[-1], as a Python int
        self._recent: list[int] = []  # item indices observed since the last fold
        self._n = 0
        self.fold_every = fold_every
        self.journal: list[int] | None = None  # a list: item, category of each observation
        # a list: (total before, item index, its category until then) of each category change,
        # while a batch's draws wait (categories_as_of)
        self.category_changes: list[tuple[int, int, int]] | None = None
        self._epoch: Positions | None = None

    def __len__(self) -> int:
        return self._n

    @property
    def total(self) -> int:
        """Occurrences observed."""
        return self._folded_total + len(self._recent)

    def counts(self) -> I64:
        """The current count of each item, in the order items were first seen."""
        recent = np.bincount(np.array(self._recent, np.int64), minlength=self._n)
        return self._folded[: self._n] + recent

    def observe(self, item: int, category: int) -> None:
        """Count one occurrence of ``item`` (its latest category is kept)."""
        i = self._index.get(item)
        if i is None:
            i = self._add(item)
        elif self.category_changes is not None and self._cats[i] != category:
            self.category_changes.append((self.total, i, int(self._cats[i])))
        self._cats[i] = category
        self._recent.append(i)
        if self.journal is not None:
            self.journal += (item, category)
        if len(self._recent) >= max(self.fold_every, self._n >> 4):
            self._fold()

    def observe_many(self, items: I64, categories: I64) -> None:
        for item, cat in zip(items.tolist(), categories.tolist(), strict=True):
            self.observe(item, cat)

    def _fold(self) -> None:
        self._folded[: self._n] = self.counts()
        self._cumulate()
        self._recent = []

    def _cumulate(self) -> None:
        """``_cum`` and ``_folded_total`` from the folded counts."""
        self._cum = np.cumsum(self._folded[: self._n])
        self._folded_total = int(self._cum[-1]) if self._n else 0

    def _add(self, item: int) -> int:
        if self._n == self._items.shape[0]:
            self._grow(2 * self._n)
        i, self._n = self._n, self._n + 1
        self._index[item] = i
        self._items[i] = item
        return i

    def _grow(self, capacity: int) -> None:
        pad = capacity - self._items.shape[0]
        self._items, self._cats, self._folded = (
            np.concatenate([a, np.zeros(pad, np.int64)])
            for a in (self._items, self._cats, self._folded)
        )

    def sample(
        self,
        k: int,
        exclude: I64 | ItemIndex,
        key: int,
        max_rounds: int = 8,
        *,
        exclude_item: int | None = None,
    ) -> tuple[I64, I64]:
        """``k`` items (with their categories) by frequency, none of them in ``exclude`` nor equal
        to ``exclude_item``; fewer when the candidates run out. Repeats across the k draws are
        allowed. Only the drawn items are looked up in ``exclude`` (no copy of it is made)."""
        total = self.total
        if k <= 0 or total == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        banned = _Membership(exclude, exclude_item)
        found: list[int] = []
        for round_ in range(max_rounds):
            draws = self._find(hash_draws(key, k * round_, k, total))
            absent = banned.absent([int(self._items[i]) for i in draws])
            found += [i for i, ok in zip(draws, absent, strict=True) if ok]
            if len(found) >= k:
                break
        idx = found[:k]
        return self._items[idx], self._cats[idx]

    def _find(self, targets: list[int]) -> list[int]:
        """The item index at each position ``t`` of the occurrence multiset."""
        cum, recent, folded = self._cum, self._recent, self._folded_total
        found = cum.searchsorted(targets, side="right").tolist()  # one call for all targets
        return [
            recent[t - folded] if t >= folded else i for t, i in zip(targets, found, strict=True)
        ]

    def positions(self) -> Positions:
        """The occurrence multiset's positions as of now (:func:`find_many` maps them to item
        indices for any total up to now's until the next fold)."""
        epoch = self._epoch
        if epoch is None or epoch.cum is not self._cum or epoch.recent is not self._recent:
            epoch = self._epoch = Positions(self._cum, self._folded_total, self._recent)
        return epoch

    def items_at(self, indices: I64) -> I64:
        """The item ids of item indices (an index keeps its item for good)."""
        return self._items[indices]

    def categories_as_of(self, indices: I64, totals: I64) -> I64:
        """The category of each item index as it was when the sampler had seen ``totals``
        occurrences (row-wise: ``totals`` has one entry per row of ``indices``), from the
        current ones and :attr:`category_changes` (recorded since those totals)."""
        cats = self._cats[indices]
        changes = self.category_changes or []
        changed: dict[int, list[tuple[int, int]]] = {}
        for total, index, old in changes:
            changed.setdefault(index, []).append((total, old))
        if not changed:
            return cats
        hit = np.isin(indices, np.fromiter(changed, np.int64, len(changed)))
        for row, col in zip(*np.nonzero(hit), strict=True):
            seen = int(totals[row])
            later = [old for total, old in changed[int(indices[row, col])] if total >= seen]
            if later:
                cats[row, col] = later[0]  # the first change after the draw: what it replaced
        return cats

    def encode(self) -> bytes:
        """Magic, counts, then items, categories and folded counts as int64 blocks, then the
        recent occurrences."""
        n, recent = self._n, np.array(self._recent, "<i8")
        arrays = (self._items[:n], self._cats[:n], self._folded[:n], recent)
        head = self.MAGIC + struct.pack("<qq", n, recent.shape[0])
        return head + b"".join(a.astype("<i8").tobytes() for a in arrays)

    @classmethod
    def decode(cls, blob: bytes) -> FrequencySampler:
        """Inverse of :meth:`encode`; also reads the earlier format (counts only, no magic)."""
        if blob[:4] == cls.MAGIC:
            n, n_recent = struct.unpack_from("<qq", blob, 4)
            cols = np.frombuffer(blob, "<i8", 3 * n + n_recent, 20)
            recent = cols[3 * n :].tolist()
        else:
            (n,) = struct.unpack_from("<q", blob)
            cols, recent = np.frombuffer(blob, "<i8", 3 * n, 8), []
        out = cls(capacity=max(64, n))
        out._items[:n], out._cats[:n], out._folded[:n] = cols[: 3 * n].reshape(3, n)
        out._index = {item: i for i, item in enumerate(out._items[:n].tolist())}
        out._n, out._recent = n, recent
        out._cumulate()
        return out


@dataclass(frozen=True, slots=True)
class Positions:
    """The occurrence multiset between two folds: positions below ``folded`` by the cumulative
    counts, the rest one recent occurrence each (a list that only grows until the next fold)."""

    cum: I64
    folded: int
    recent: list[int]


def find_many(positions: Positions, targets: I64) -> I64:
    """:meth:`FrequencySampler._find` of many positions at once (any shape)."""
    below = targets < positions.folded
    out = np.empty(targets.shape, np.int64)
    out[below] = positions.cum.searchsorted(targets[below], side="right")
    if not below.all():
        recent = np.array(positions.recent, np.int64)
        out[~below] = recent[targets[~below] - positions.folded]
    return out


class _Membership:
    """``value not in pool and value != item`` for the few values of one draw: only those
    values are looked up (a list scan in a small pool, a vectorised comparison in a large
    one), so nothing is copied or hashed per pool element up front."""

    SMALL = 128  # up to this many, a Python list scan beats building arrays

    def __init__(self, pool: I64 | ItemIndex, item: int | None = None) -> None:
        self.pool, self.item = pool, item

    def absent(self, values: list[int]) -> list[bool]:
        if isinstance(self.pool, ItemIndex):  # a user's log, indexed: no scan of it
            hits = self.pool.contains(values)
            return [not hit and v != self.item for v, hit in zip(values, hits, strict=True)]
        if not self.pool.shape[0]:
            return [v != self.item for v in values]
        if self.pool.shape[0] <= self.SMALL:
            pool = self.pool.tolist()
            return [v != self.item and v not in pool for v in values]
        hits = _member(np.array(values, np.int64), self.pool).tolist()
        return [not hit and v != self.item for v, hit in zip(values, hits, strict=True)]


def _member(values: I64, pool: I64) -> npt.NDArray[np.bool_]:
    """``np.isin`` that stays cheap for a few values against a large pool."""
    if values.shape[0] * pool.shape[0] <= 1 << 22:
        return (values[:, None] == pool[None, :]).any(axis=1)
    return np.isin(values, pool)


def event_key(seed: int, event: Event) -> int:
    """The random key of an event's negatives: a replay of the event draws the same ones. An
    event with an id: the hash of its id (the dedupe check's, cached) mixed with the seed, no
    second digest (the draws changed with this in issue 13's round 4); without one, the digest
    of what it is."""
    if event.event_id:
        return splitmix64_int((hash_id(event.event_id) + _SEED_STEP * seed) & _M64)
    name = f"{event.user_id}|{event.item_id}|{event.ts!r}|{event.type.value}"
    return hash_id(f"{seed}|{name}")


_SEED_STEP = 0xD1B54A32D192ED03  # odd: distinct seeds give distinct keys for one id
_M64 = (1 << 64) - 1
