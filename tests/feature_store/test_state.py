"""UserState: sessions, recent sequence, late events, dedupe, cap, encoding."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.schema import EventType, InvalidEvent, Reason
from feature_store.cluster_config import ClusterConfig
from feature_store.state import Admission, LateEvent, StateConfig, UserState
from feature_store.state_format import StateFormatError
from tests.support.events import T0, event

GAP = 100.0
LATENESS = 300.0
CFG = StateConfig(
    recent_length=5, lifelong_cap=10_000, session_gap_s=GAP, allowed_lateness_s=LATENESS
)


def reference_sessions(ts_sorted: list[float], gap: float) -> list[int]:
    """Offline sessionization over a time-sorted list: a new session after a gap > ``gap``."""
    out, current = [], 0
    for i, t in enumerate(ts_sorted):
        if i and t - ts_sorted[i - 1] > gap:
            current += 1
        out.append(current)
    return out


# (forward step of the clock, how far behind the clock the event is stamped)
arrivals = st.lists(
    st.tuples(st.floats(0, 250, allow_nan=False), st.floats(0, 400, allow_nan=False)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(arrivals)
def test_state_matches_offline_reference(steps: list[tuple[float, float]]) -> None:
    """Replay in arrival order (with late events) == offline computation over sorted admitted ones:
    sessions, recent-before-each-event, and the late rejections."""
    state = UserState.empty(CFG)
    clock, watermark = 0.0, None
    admitted: list[tuple[float, int]] = []  # (ts, arrival index)
    for i, (step, behind) in enumerate(steps):
        clock += step
        ts = T0 + max(0.0, clock - behind)
        e = event(ts - T0, item=str(i), event_id=f"e{i}")
        if watermark is not None and ts < watermark - LATENESS:
            with pytest.raises(LateEvent):
                state.apply(e, CFG)
            continue
        before = [t for t, _ in sorted(admitted) if t <= ts][-CFG.recent_length :]
        assert state.recent(CFG.recent_length, as_of=ts)["ts"].tolist() == before
        assert state.apply(e, CFG) is Admission.APPLIED
        admitted.append((ts, i))
        watermark = ts if watermark is None else max(watermark, ts)
    order = sorted(admitted)  # by ts, ties by arrival: the log's insertion rule
    assert state.log["ts"].tolist() == [t for t, _ in order]
    assert state.log["item"].tolist() == [i for _, i in order]
    expected = reference_sessions([t for t, _ in order], GAP)
    assert state.log["session"].tolist() == expected
    assert state.session_count == expected[-1] + 1
    assert state.watermark == watermark


def test_recent_is_the_last_L_oldest_first() -> None:
    state = UserState.empty(CFG)
    for i in range(12):
        state.apply(event(10.0 * i, item=str(i)), CFG)
    assert state.recent(5)["item"].tolist() == [7, 8, 9, 10, 11]
    assert state.recent(5, as_of=T0 + 35.0)["item"].tolist() == [0, 1, 2, 3]
    assert state.last_ts == T0 + 110.0


def test_late_event_within_lateness_merges_sessions() -> None:
    state = UserState.empty(CFG)
    state.apply(event(0.0), CFG)
    state.apply(event(150.0), CFG)  # gap 150 > 100: second session
    assert state.session_count == 2
    state.apply(event(75.0, item="late"), CFG)  # fills the gap: 75 + 75
    assert state.log["session"].tolist() == [0, 0, 0]
    assert state.session_count == 1 and state.session_start == T0


def test_late_event_can_open_a_session_in_the_middle() -> None:
    state = UserState.empty(CFG)
    for ts in (0.0, 10.0, 400.0):
        state.apply(event(ts), CFG)
    state.apply(event(200.0, item="late"), CFG)
    assert state.log["session"].tolist() == [0, 0, 1, 2]
    assert state.session_start == T0 + 400.0


def test_event_beyond_lateness_is_rejected_as_late() -> None:
    state = UserState.empty(CFG)
    state.apply(event(1_000.0), CFG)
    before = state.encode()
    with pytest.raises(LateEvent) as err:
        state.apply(event(1_000.0 - LATENESS - 1), CFG)
    assert isinstance(err.value, InvalidEvent) and err.value.reason is Reason.LATE
    assert state.encode() == before
    assert state.apply(event(1_000.0 - LATENESS), CFG) is Admission.APPLIED  # boundary is kept


def test_impressions_move_the_watermark_but_are_not_behaviours() -> None:
    state = UserState.empty(CFG)
    state.apply(event(1_000.0, kind=EventType.IMPRESSION), CFG)
    assert state.log.shape == (0,) and state.watermark == T0 + 1_000.0
    with pytest.raises(LateEvent):
        state.apply(event(0.0), CFG)


def test_duplicate_event_ids_change_nothing() -> None:
    state = UserState.empty(CFG)
    assert state.apply(event(0.0, event_id="a"), CFG) is Admission.APPLIED
    before = state.encode()
    assert state.apply(event(5.0, item="9", event_id="a"), CFG) is Admission.DUPLICATE
    assert state.encode() == before
    assert state.apply(event(5.0), CFG) is Admission.APPLIED  # no id: never a duplicate
    assert state.apply(event(6.0), CFG) is Admission.APPLIED


def test_dedupe_window_is_bounded() -> None:
    cfg = StateConfig(dedupe_window=4, session_gap_s=GAP, allowed_lateness_s=LATENESS)
    state = UserState.empty(cfg)
    for i in range(5):
        state.apply(event(float(i), event_id=f"e{i}"), cfg)
    assert not state.seen("e0") and all(state.seen(f"e{i}") for i in range(1, 5))
    assert UserState.decode(state.encode()).seen("e4")


@pytest.mark.parametrize("window", [20, 100])
def test_dedupe_ring_grows_to_the_window_across_encodings(window: int) -> None:
    """The ring starts small and doubles up to the window; encoding keeps every id it holds."""
    cfg = StateConfig(dedupe_window=window, session_gap_s=GAP, allowed_lateness_s=LATENESS)
    state = UserState.empty(cfg)
    for i in range(150):
        state.apply(event(float(i), event_id=f"e{i}"), cfg)
        if i % 7 == 0:
            state = UserState.decode(state.encode())
    remembered = [i for i in range(150) if state.seen(f"e{i}")]
    assert remembered == list(range(150 - window, 150))


def test_lifelong_log_is_capped_keeping_the_newest() -> None:
    cfg = StateConfig(recent_length=3, lifelong_cap=10, session_gap_s=GAP)
    state = UserState.empty(cfg)
    for i in range(25):
        state.apply(event(60.0 * i + (1_000.0 if i >= 20 else 0.0), item=str(i)), cfg)
    assert state.log["item"].tolist() == list(range(15, 25))
    assert state.total == 25
    assert state.log["session"].tolist() == [0] * 5 + [1] * 5  # absolute indices survive the cap
    assert state.session_count == 2


def test_dense_features_are_kept_in_order() -> None:
    cfg = StateConfig(dense_features=("dwell", "price", "device"))
    state = UserState.empty(cfg)
    state.apply(event(0.0, features={"dwell": 3.5, "device": "ios", "other": 1.0}), cfg)
    assert state.log["dense"].tolist() == [[3.5, 0.0, 0.0]]
    with pytest.raises(StateFormatError):
        state.apply(event(1.0), CFG)  # a config with another dense width


@settings(max_examples=30, deadline=None)
@given(arrivals, st.booleans())
def test_encode_decode_round_trip(steps: list[tuple[float, float]], cluster: bool) -> None:
    cfg = StateConfig(dense_features=("dwell",), session_gap_s=GAP, allowed_lateness_s=1e9)
    ccfg = ClusterConfig(max_leaf=3, max_clusters=200, lifelong_cap=cfg.lifelong_cap)
    state = UserState.empty(cfg)
    clock = 0.0
    for i, (step, behind) in enumerate(steps):
        clock += step
        e = event(
            max(0.0, clock - behind), item=str(i % 7), event_id=f"e{i}", features={"dwell": step}
        )
        state.apply(e, cfg)
        if cluster:
            state.maybe_recluster(ccfg)
    blob = state.encode()
    copy = UserState.decode(blob)
    assert copy.encode() == blob
    assert copy.log.tobytes() == state.log.tobytes()
    assert (copy.total, copy.watermark, copy.session_count) == (
        state.total,
        state.watermark,
        state.session_count,
    )
    assert copy.clusters().tobytes() == state.clusters().tobytes()
    nxt = event(clock + 10.0, item="next", event_id="next")  # both evolve identically
    state.apply(nxt, cfg)
    copy.apply(nxt, cfg)
    assert copy.encode() == state.encode()


def test_decode_never_aliases_the_input_for_writes() -> None:
    state = UserState.empty(CFG)
    state.apply(event(0.0, item="1"), CFG)
    blob = state.encode()
    copy = UserState.decode(blob)
    copy.apply(event(1.0, item="2"), CFG)
    assert UserState.decode(blob).log["item"].tolist() == [1]


def test_decode_rejects_foreign_bytes() -> None:
    blob = UserState.empty(CFG).encode()
    for bad, msg in (
        (b"xx", "shorter"),
        (b"NOPE" + blob[4:], "magic"),
        (blob[:4] + b"\x09\x00" + blob[6:], "version"),
        (blob + b"\x00", "trailing"),
    ):
        with pytest.raises(StateFormatError, match=msg):
            UserState.decode(bad)
    full = UserState.empty(CFG)
    full.apply(event(0.0), CFG)
    with pytest.raises(StateFormatError, match="truncated"):
        UserState.decode(full.encode()[:-3])


def test_empty_state_reads() -> None:
    state = UserState.empty(CFG)
    assert state.session_count == 0 and state.session_start is None and state.last_ts is None
    assert state.recent(5).shape == (0,) and state.clusters().shape == (0,)
    assert state.watermark is None and UserState.decode(state.encode()).watermark is None
