"""What the users' states must hold once a log has gone through the workers: each user's log
holds the times of exactly the user's behaviours, in order; counted once, none lost, none
applied twice.

>>> from feature_store import StateConfig, UserState
>>> from tests.support.events import event
>>> events = [event(10.0), event(30.0), event(20.0, user="v")]
>>> states = {e.user_id: UserState.empty(StateConfig()) for e in events}
>>> for e in events:
...     _ = states[e.user_id].apply(e, StateConfig())
>>> assert_each_behaviour_once(states, events)
>>> del states["v"]  # a user's behaviour lost
>>> assert_each_behaviour_once(states, events)  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
...
AssertionError
"""

from __future__ import annotations

import numpy as np

from contracts.schema import Event
from feature_store import UserState


def behaviour_times(events: list[Event]) -> dict[str, list[float]]:
    """Each user's behaviour times, in the log's order."""
    per_user: dict[str, list[float]] = {}
    for e in events:
        per_user.setdefault(e.user_id, []).append(e.ts)
    return per_user


def assert_logs_hold_the_behaviours(
    states: dict[str, UserState], events: list[Event]
) -> dict[str, list[float]]:
    """``states`` are those of exactly the users of ``events``, and each user's log holds the
    user's behaviour times in event-time order. Returns the times, by user."""
    per_user = behaviour_times(events)
    assert set(states) == set(per_user)
    for user, ts in per_user.items():
        assert np.array_equal(states[user].log["ts"], np.sort(np.array(ts))), user
    return per_user


def assert_each_behaviour_once(states: dict[str, UserState], events: list[Event]) -> None:
    """As :func:`assert_logs_hold_the_behaviours`, and each state counted each of its user's
    behaviours once: none lost, none applied twice."""
    for user, ts in assert_logs_hold_the_behaviours(states, events).items():
        assert states[user].total == len(ts), user
