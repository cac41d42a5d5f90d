"""PartitionWorker: idempotent replay after a crash, late events to the DLQ, explicit timers."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.schema import EventType, Reason
from contracts.settings import Settings
from feature_store.ids import stable_id
from feature_store.ingest import FeatureConfig, PartitionWorker
from feature_store.sample_format import decode_samples
from feature_store.samples import SampleConfig
from feature_store.store import StateStore
from tests.support.events import T0, event
from tests.support.ingest import CONFIG, dump, run, stream
from tests.support.stores import open_store


def test_replay_after_crash_equals_an_uninterrupted_run(store: StateStore, tmp_path: Path) -> None:
    """Crash after two committed chunks and one processed-but-uncommitted chunk; a new worker
    replays everything from offset 0: same states, same offset, and exactly the missing samples."""
    records = stream(300)
    reference = open_store("memory", tmp_path)
    expected = run(reference, records, chunk=50)

    crashed = PartitionWorker(store, 0, CONFIG)
    done: list[bytes] = []
    for k in (0, 50):
        result = crashed.process(records[k : k + 50])
        crashed.commit(result)
        done += result.samples
    crashed.process(records[100:150])  # lost: never committed
    replay = run(store, records, chunk=50)  # a fresh worker, from the store

    assert done + replay == expected
    assert dump(store) == dump(reference)
    assert store.last_offset(0) == reference.last_offset(0) == 299


def test_processing_the_same_chunk_twice_changes_nothing(store: StateStore) -> None:
    records = stream(60)
    worker = PartitionWorker(store, 0, CONFIG)
    worker.commit(worker.process(records))
    before = dump(store)
    again = worker.process(records)
    assert (again.skipped, again.applied, again.samples, again.offset) == (60, 0, [], None)
    worker.commit(again)
    assert dump(store) == before


def test_late_events_are_rejected_and_duplicates_dropped(store: StateStore) -> None:
    worker = PartitionWorker(store, 0, CONFIG)
    records = [
        (0, event(1_000.0, event_id="a")),
        (1, event(1_000.0, event_id="a")),  # producer retry
        (2, event(500.0, event_id="b")),  # 500 s behind the user's watermark
        (3, event(800.0, event_id="c")),  # 200 s behind: inserted in order
    ]
    result = worker.process(records)
    worker.commit(result)
    assert (result.applied, result.duplicates) == (2, 1)
    assert [(o, err.reason) for o, err in result.rejected] == [(2, Reason.LATE)]
    state = store.get("u1")
    assert state is not None and state.log["ts"].tolist() == [T0 + 800.0, T0 + 1_000.0]
    assert store.last_offset(0) == 3


def test_explicit_mode_tick_closes_windows_and_survives_restart(store: StateStore) -> None:
    config = FeatureConfig(samples=SampleConfig(mode="explicit", attribution_window_s=600))
    worker = PartitionWorker(store, 0, config)
    imp = [
        (0, event(0.0, item="x", kind=EventType.IMPRESSION)),
        (1, event(10.0, item="y", kind=EventType.IMPRESSION)),
    ]
    worker.commit(worker.process(imp))
    restarted = PartitionWorker(store, 0, config)  # pending impressions come back from the store
    result = restarted.process([(2, event(100.0, item="x")), (3, event(2_000.0, item="z"))])
    restarted.commit(result)
    assert decode_samples(result.samples).target_item.tolist() == [stable_id("x")]
    closed = decode_samples(restarted.tick())  # watermark 2000 - lateness 300 > 10 + 600
    assert closed.target_item.tolist() == [stable_id("y")] and closed.label.tolist() == [0.0]
    assert PartitionWorker(store, 0, config).tick(now=T0 + 10_000.0) == []  # already persisted


def test_feature_config_from_settings() -> None:
    cfg = FeatureConfig.from_settings(Settings(session_gap_s=600, recent_length=50))
    assert (cfg.state.session_gap_s, cfg.state.recent_length, cfg.samples.recent_length) == (
        600,
        50,
        50,
    )
    assert cfg.clusters.raw_until == 200  # a log that fits the recent sequence's L stays raw
    env = {"TWINSTREAM_CLUSTER_RAW_UNTIL": "0"}  # every log clustered, as the paper
    assert FeatureConfig.from_settings(Settings.from_env(env)).clusters.raw_until == 0
    with pytest.raises(ValueError, match="cluster_raw_until"):
        Settings(lifelong_cap=150, recent_length=50)
