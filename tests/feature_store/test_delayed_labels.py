"""Delayed labels: last-touch attribution, window close, persistence through the journal."""

from __future__ import annotations

from feature_store.delayed_labels import PendingImpressions
from feature_store.store import MemoryStore


def test_last_touch_attribution() -> None:
    p = PendingImpressions(window_s=100, labeller=lambda blob, label: blob + b"%d" % label)
    p.add_impression("u", "i", None, 0.0, b"A")
    p.add_impression("u", "i", None, 50.0, b"B")
    assert p.add_click("u", "i", None, 60.0) == [b"B1"]
    assert p.add_click("u", "i", None, 150.0) == []  # A's window [0, 100] is over
    assert p.close_expired(1_000.0) == [b"A0"] and len(p) == 0


def test_pending_impressions_persist_through_the_journal() -> None:
    store = MemoryStore()
    labeller = lambda blob, label: blob + b"%d" % label  # noqa: E731
    p = PendingImpressions(window_s=100, labeller=labeller, prefix="pending/0/")
    p.add_impression("u", "i", "r", 0.0, b"A")
    p.add_impression("u", "j", None, 10.0, b"B")
    p.add_click("v", "k", None, 20.0)
    store.write_batch({}, {}, p.drain_changes())
    assert p.add_click("u", "i", "r", 30.0) == [b"A1"]
    store.write_batch({}, {}, p.drain_changes())
    restored = PendingImpressions(window_s=100, labeller=labeller, prefix="pending/0/")
    restored.restore(v for _, v in store.meta_items("pending/0/"))
    assert len(restored) == 2
    assert restored.add_impression("v", "k", None, 15.0, b"C") == [b"C1"]
    assert restored.close_expired(200.0) == [b"B0"] == p.close_expired(200.0)
