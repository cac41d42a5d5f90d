"""The item index of a state says of every item whether the log holds it, as a scan of the log
would, through appends, late inserts, the lifelong cap and rebuilds."""

from __future__ import annotations

import numpy as np
import pytest

from feature_store.ids import stable_id
from feature_store.state import StateConfig, UserState
from tests.support.events import event


@pytest.mark.parametrize("n_items", [50, 3_000])  # items that stay; items that leave the log
def test_the_index_agrees_with_the_log_through_late_events_the_cap_and_rebuilds(
    n_items: int,
) -> None:
    config = StateConfig(lifelong_cap=500, allowed_lateness_s=600)
    state, rng = UserState.empty(config), np.random.default_rng(0)
    probes = list(range(0, n_items, max(1, n_items // 60)))
    for i in range(3_000):
        late = float(rng.integers(0, 500)) if rng.random() < 0.2 else 0.0
        state.apply(event(10.0 * i - late, str(rng.integers(0, n_items))), config)
        if i % 97 == 0 or i > 2_990:
            held = set(state.log["item"].tolist())
            want = [stable_id(str(p)) in held for p in probes]
            assert state.items().contains([stable_id(str(p)) for p in probes]) == want
    assert state.log.shape[0] == 500 and state.total == 3_000
