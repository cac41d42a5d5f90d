"""A small synthetic :class:`streaming.sources.EventLog` for trainer tests."""

from __future__ import annotations

import numpy as np

from streaming.sources import EventLog


def synthetic_log(
    n_users: int = 12, n_events: int = 600, n_items: int = 60, seed: int = 0
) -> EventLog:
    """Users prefer a few categories (item i has category i % 6); bursts of events make sessions."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, n_users, n_events)
    favourite = rng.integers(0, 6, n_users)
    item = rng.integers(0, n_items // 6, n_events) * 6 + favourite[user]
    item = np.where(rng.random(n_events) < 0.3, rng.integers(0, n_items, n_events), item)
    ts = np.cumsum(rng.choice([10.0, 4000.0], size=n_events, p=[0.9, 0.1])) + 1.6e9
    kind = rng.choice(["click", "click", "click", "cart", "impression"], size=n_events)
    as_str = np.vectorize(str, otypes=[object])
    return EventLog(
        user_id=as_str(user + 1000),
        item_id=as_str(item * 7 + 100),
        category_id=as_str(item % 6),
        type=kind.astype(object),
        ts=ts,
    )
