"""GilShare: a thread's share of the interpreter lock, kept to what it was given."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from serving.gil_share import GilShare


def _spin(cpu_s: float) -> None:
    """Python work until this thread has used ``cpu_s`` of CPU time."""
    end = time.thread_time() + cpu_s
    while time.thread_time() < end:
        sum(range(200))


def test_work_is_spread_to_its_share_of_wall_time() -> None:
    gil = GilShare(share=0.25, slice_s=0.001)
    began = time.perf_counter()
    with gil.limited():
        _spin(0.1)
    took = time.perf_counter() - began
    assert took >= 0.1 / 0.25 * 0.8  # about 4x its CPU time
    assert gil.slept_s == pytest.approx(0.3, rel=0.2)


def test_a_request_thread_keeps_most_of_its_speed_beside_a_limited_one() -> None:
    """Two Python threads share the GIL half and half; limited to 0.1, the other gets ~0.9."""

    def rate_beside(share: float) -> float:
        stop, gil = threading.Event(), GilShare(share=share, slice_s=0.0005)

        def background() -> None:
            with gil.limited():
                while not stop.is_set():
                    sum(range(200))

        thread = threading.Thread(target=background)
        thread.start()
        began, loops = time.perf_counter(), 0
        while time.perf_counter() - began < 0.3:
            sum(range(200))
            loops += 1
        stop.set()
        thread.join()
        return loops / 0.3

    previous = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    try:
        unlimited, limited = rate_beside(1.0), rate_beside(0.1)
    finally:
        sys.setswitchinterval(previous)
    assert limited > 1.4 * unlimited


def test_blocking_waits_are_not_counted_as_work() -> None:
    gil = GilShare(share=0.1, slice_s=0.001)
    began = time.perf_counter()
    with gil.limited():
        for _ in range(5):
            time.sleep(0.02)  # no CPU time: no pause after it
    assert time.perf_counter() - began < 0.3
    assert gil.slept_s < 0.05


def test_the_profile_hook_is_removed_afterwards_and_share_one_installs_none() -> None:
    with GilShare(share=0.5).limited():
        assert sys.getprofile() is not None
    assert sys.getprofile() is None
    with GilShare(share=1.0).limited():
        assert sys.getprofile() is None
    with pytest.raises(ValueError):
        GilShare(share=0.0)


def test_a_follower_lifts_the_limit_while_it_is_behind() -> None:
    from prometheus_client import CollectorRegistry

    from serving.delta_follow import DeltaFollower
    from serving.metrics import ScoringMetrics
    from serving.scorer import ModelHolder
    from serving.signing import Signer

    holder = ModelHolder()
    follower = DeltaFollower(
        holder, ScoringMetrics.create(CollectorRegistry()), Signer.of(None), 1 << 20,
        lambda *a: None, gil_share=0.2,
    )  # fmt: skip
    assert follower.gil.busy is not None and not follower.gil.busy()
    with holder.requests.entered():
        assert follower.gil.busy()  # the limit follows the scorer's requests
    with follower.paced():
        assert sys.getprofile() is not None  # caught up: requests first
    with follower.paced(time.time() - 1.0):
        assert sys.getprofile() is not None  # a fresh delta
    with follower.paced(time.time() - 3.0):
        assert sys.getprofile() is None  # made 3 s ago: freshness first
    follower.behind = True
    with follower.paced():
        assert sys.getprofile() is None  # a backlog to replay: freshness first


def test_the_limit_holds_only_while_requests_are_in_flight() -> None:
    """Between requests the thread pauses only a quarter of its work (idle share 0.8); while a
    request is being scored it keeps to its share (0.1: nine times its work asleep)."""
    in_flight = [False]
    gil = GilShare(share=0.1, slice_s=0.001, busy=lambda: in_flight[0], idle_share=0.8)
    with gil.limited():
        _spin(0.1)
    assert gil.slept_s == pytest.approx(0.1 * 0.25, rel=0.25)
    in_flight[0], gil.slept_s = True, 0.0
    with gil.limited():
        _spin(0.05)
    assert gil.slept_s == pytest.approx(0.05 * 9, rel=0.25)


def test_the_scorer_counts_each_request_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.requests import ScoreRequest
    from serving.scorer import ItemCatalog, ModelHolder, Scorer

    holder = ModelHolder()
    seen: list[bool] = []

    def score(self: Scorer, req: object, state: object) -> dict[str, object]:
        seen.append(bool(holder.requests))
        return {}

    monkeypatch.setattr(Scorer, "_score", score)
    Scorer(holder, ItemCatalog()).score(ScoreRequest("r", "u", ("1",), ("1",)), None)
    assert seen == [True]
    assert not holder.requests
