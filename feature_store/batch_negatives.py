"""The negatives of one batch's positives, drawn together once the batch is applied.

:meth:`feature_store.negatives.FrequencySampler.sample` draws a positive's negatives at its turn:
a few hashed positions in the occurrence multiset, their items looked up one call at a time and
checked against the user's log, a round again while fewer than K are left. Per event, that is
two dozen small numpy and Python calls (a quarter of a worker's CPU on 10k-behaviour users).
:class:`BatchNegatives` draws the same negatives for a whole batch in a few array operations: at
each positive's turn it records what its draws depend on (its key, the sampler's total and
positions, its item, and the user's log), and :meth:`BatchNegatives.draw` then hashes every
positive's rounds at once (:func:`feature_store.ids.hash_draws_many`), maps the positions to items
(:func:`feature_store.negatives.find_many`) and checks them against each user's log *as of the
positive*: a short log (up to ``SHORT_HISTORY`` behaviours) by a copy of its items taken then, a
long one by its item index after the batch less the items it gained (and plus those it lost to
the cap) since the positive's turn, which the state records meanwhile
(:class:`feature_store.item_index.ItemJournal`). Categories are those of the positive's turn
(:meth:`~feature_store.negatives.FrequencySampler.categories_as_of`). The draws are exactly
those of ``sample`` (tests/feature_store/test_batch_negatives.py), so a replay of an event draws
the same negatives whichever path made them.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from feature_store.ids import hash_draws_many
from feature_store.item_index import ItemJournal
from feature_store.negatives import FrequencySampler, Positions, find_many
from feature_store.state import UserState

I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]
SHORT_HISTORY = 128  # up to this many behaviours, a positive keeps its user's items as a list
ROUND_PASSES = ((0, 2), (2, 8))  # rounds drawn together: most positives need one or two
NO_POOL = -1  # a positive of a short log: no journal


class BatchNegatives:
    """Negatives of a batch's implicit positives (:meth:`add` at each one's turn, before the
    sampler observes it and before its state applies it; then :meth:`draw` once)."""

    def __init__(self, sampler: FrequencySampler, k: int, max_rounds: int = 8) -> None:
        self.sampler, self.k, self.max_rounds = sampler, k, max_rounds
        self.keys: list[int] = []
        self.totals: list[int] = []
        self.targets: list[int] = []
        self.positions: list[Positions] = []
        self.position_of: list[int] = []  # per positive: its entry of positions
        self.short_logs: list[list[int]] = []  # per positive: its user's items then (short)
        self.pool_of: list[int] = []  # per positive: its user's entry of states, or NO_POOL
        self.journal_at: list[int] = []  # per positive: its user's journal length then
        self.states: list[UserState] = []
        self._pool: dict[int, int] = {}  # id(state) -> its entry of states
        sampler.category_changes = []

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, state: UserState, key: int, target: int) -> None:
        """Record one positive (``key``: its :func:`feature_store.negatives.event_key`,
        ``target``: its item, never a negative of it)."""
        sampler = self.sampler
        positions = sampler.positions()
        if not self.positions or self.positions[-1] is not positions:
            self.positions.append(positions)
        self.keys.append(key)
        self.totals.append(sampler.total)
        self.targets.append(target)
        self.position_of.append(len(self.positions) - 1)
        n_log = state.n_log
        if n_log <= SHORT_HISTORY:
            self.short_logs.append(state.log["item"].tolist() if n_log else [])
            self.pool_of.append(NO_POOL)
            self.journal_at.append(0)
            return
        self.short_logs.append([])
        pool = self._pool.get(id(state))
        if pool is None:
            pool = self._pool[id(state)] = len(self.states)
            self.states.append(state)
            state.item_journal = ItemJournal()
        self.pool_of.append(pool)
        self.journal_at.append(len(state.item_journal or ()))

    def close(self) -> None:
        """Stop the states' and the sampler's records (once drawn, or when the batch failed)."""
        for state in self.states:
            state.item_journal = None
        self.sampler.category_changes = None

    def draw(self) -> tuple[I64, I64, I64]:
        """Every positive's negatives: items and categories (rows of K, in draw order) and how
        many of each row were found (fewer than K when the candidates ran out)."""
        n, k = len(self.keys), self.k
        chosen = np.full((n, max(k, 0)), -1, np.int64)
        found = np.zeros(n, np.int64)
        totals = np.array(self.totals, np.int64)
        active = np.flatnonzero(totals > 0) if k > 0 else np.zeros(0, np.int64)
        keys = np.array(self.keys, np.uint64)
        for first, last in ROUND_PASSES:
            last = min(last, self.max_rounds)
            if not active.shape[0] or first >= last:
                break
            draws = hash_draws_many(keys[active], k * first, k * (last - first), totals[active])
            indices = self._find(active, draws)
            absent = self._absent(active, self.sampler.items_at(indices))
            _keep_in_order(chosen, found, active, indices, absent)
            active = active[found[active] < k]
        valid = chosen >= 0
        safe = np.where(valid, chosen, 0)
        items = np.where(valid, self.sampler.items_at(safe), 0)
        cats = np.where(valid, self.sampler.categories_as_of(safe, totals), 0)
        return items, cats, found

    def _find(self, rows: I64, draws: I64) -> I64:
        """Item indices of the drawn positions, each row by its positive's positions."""
        of = np.array(self.position_of, np.int64)[rows]
        out = np.empty(draws.shape, np.int64)
        for p in np.unique(of).tolist():
            mine = of == p
            out[mine] = find_many(self.positions[p], draws[mine])
        return out

    def _absent(self, rows: I64, items: I64) -> Bools:
        """Which drawn items each positive may keep: not its own item, not in its user's log as
        of its turn."""
        ok = items != np.array(self.targets, np.int64)[rows][:, None]
        pools = np.array(self.pool_of, np.int64)[rows]
        for i in np.flatnonzero(pools == NO_POOL).tolist():
            log = self.short_logs[int(rows[i])]
            if log:
                ok[i] &= [v not in log for v in items[i].tolist()]
        for pool in np.unique(pools[pools != NO_POOL]).tolist():
            mine = np.flatnonzero(pools == pool)
            ok[mine] &= ~self._in_long_log(pool, rows[mine], items[mine])
        return ok

    def _in_long_log(self, pool: int, rows: I64, items: I64) -> Bools:
        """Whether each item was in the (long) log of ``pool``'s user at each row's turn: its
        count after the batch less what the log gained since that turn."""
        state = self.states[pool]
        journal = state.item_journal or ItemJournal()
        now = state.items().counts(items.reshape(-1)).reshape(items.shape)
        starts = np.array(self.journal_at, np.int64)[rows]
        held: Bools = now - journal.since(items, starts) > 0
        return held


def _keep_in_order(chosen: I64, found: I64, rows: I64, indices: I64, absent: Bools) -> None:
    """Append each row's absent draws, in draw order, to its chosen ones until it has K."""
    k = chosen.shape[1]
    slot = found[rows][:, None] + np.cumsum(absent, axis=1) - 1
    keep = absent & (slot < k)
    r, c = np.nonzero(keep)
    chosen[rows[r], slot[r, c]] = indices[r, c]
    found[rows] = np.minimum(k, found[rows] + absent.sum(axis=1))
