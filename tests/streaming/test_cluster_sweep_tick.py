"""The ingest timer's TWIN-V2 sweep: a user left stale by new embeddings is rebuilt on the tick,
its changelog record acknowledged before the store commits it, and the sweep is counted."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import orjson
from prometheus_client import CollectorRegistry

from contracts.settings import Settings
from feature_store.state_delta import record_user
from serving.item_embeddings import ClusterMetrics
from serving.scorer import ItemCatalog
from streaming.ingest import IngestService, RawMessage
from streaming.metrics import IngestMetrics
from streaming.partitions import OwnedPartitions
from tests.support.events import T0
from tests.support.sink import MemorySink

TOPICS = Settings().topics


class VersionedTable:
    """Item embeddings whose version the test bumps, as a new snapshot would."""

    version = 1

    def __call__(self, items: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        rng = np.random.default_rng(self.version)
        return rng.standard_normal((53, 8)).astype(np.float32)[items % 53]


def clicks(n: int) -> list[RawMessage]:
    return [
        RawMessage(0, i, orjson.dumps({"user_id": "u1", "item_id": str(i % 31), "type": "click",
                                       "category_id": str(i % 4), "ts": T0 + i}), T0 + i)
        for i in range(n)
    ]  # fmt: skip


async def test_the_tick_rebuilds_a_stale_user_changelog_first(
    partitions: OwnedPartitions, metrics: IngestMetrics
) -> None:
    table, sink = VersionedTable(), MemorySink()
    partitions.embedder = table
    service = IngestService(Settings(), sink, partitions, ItemCatalog(), metrics)
    registry = CollectorRegistry()
    service.cluster_metrics = ClusterMetrics(registry)
    await partitions.own([0])
    await service.handle(clicks(600))
    await service.tick()  # nothing stale: no changelog, no flush
    before, flushes = len(sink.records[TOPICS.state_changelog]), sink.flushes
    table.version = 2
    await service.tick()
    swept = sink.records[TOPICS.state_changelog][before:]
    assert swept and {record_user(r.key) for r in swept} == {"u1"}
    assert {r.flushes_before for r in swept} == {flushes} and sink.flushes == flushes + 1
    (state,) = partitions.workers[0].store.get_many(["u1"])
    assert state is not None and state.cluster_state.version == 2
    assert registry.get_sample_value("twinstream_cluster_sweep_rebuilds_total") == 1
    await service.tick()  # fresh now
    assert sink.flushes == flushes + 1
