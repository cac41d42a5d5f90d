"""A PartitionWorker run over a disordered click stream: the crash and replay tests share it."""

from __future__ import annotations

import numpy as np

from contracts.schema import Event
from feature_store.ingest import FeatureConfig, PartitionWorker
from feature_store.samples import SampleConfig
from feature_store.state import StateConfig
from feature_store.store import StateStore
from tests.support.events import event

CONFIG = FeatureConfig(
    state=StateConfig(recent_length=8, allowed_lateness_s=300),
    samples=SampleConfig(recent_length=8),
    sampler_checkpoint_every=1,
)


def stream(n: int, seed: int = 0) -> list[tuple[int, Event]]:
    """``n`` click events of 6 users with a little disorder (some late beyond 300 s)."""
    rng = np.random.default_rng(seed)
    out = []
    for offset in range(n):
        ts = 20.0 * offset - float(rng.choice([0, 0, 0, 120, 900]))
        e = event(ts, item=str(rng.integers(0, 30)), user=f"u{rng.integers(0, 6)}",
                  event_id=f"p0/{offset}")  # fmt: skip
        out.append((offset, e))
    return out


def run(store: StateStore, records: list[tuple[int, Event]], chunk: int) -> list[bytes]:
    worker, samples = PartitionWorker(store, 0, CONFIG), []
    for k in range(0, len(records), chunk):
        result = worker.process(records[k : k + chunk])
        worker.commit(result)
        samples += result.samples
    return samples


def dump(store: StateStore) -> dict[str, bytes]:
    return {u: s.encode() for u in store.users() if (s := store.get(u)) is not None}
