"""CPU of the worker's batch path in one process, without Faust and without the broker's work.

    python -m ops.bench.bench_batch_path [--data PATH] [--events 110300] [--batch 2000]
                                         [--narrow-ids] [--profile]

The log's events (default: ``taobao_stream``) become JSON messages on their owner partitions and
go through :meth:`streaming.ingest.IngestService.handle` in batches of ``--batch``: validation,
routing, :class:`feature_store.PartitionWorker` over one :class:`feature_store.RocksDBStore` per
partition (states read, dedupe, sessions, clusters, negatives, samples, changelog records, the
RocksDB batch) and the sends, appended to real aiokafka record batches (:class:`RecordBatchSink`:
what :class:`streaming.sink.FaustSink` does per record, less the network and the broker, whose
acknowledgements it gives at once). The first tenth of the batches warms up and is not counted.
Printed: CPU µs per event (``time.process_time``), events/s of wall time, sample bytes; and as the
baseline of the same run, the CPU of parsing and validating the same messages alone (what any
consumer of ``events`` pays), with the ratio. ``--profile``: cProfile's top functions after.
What it leaves out, the worker pays too: Faust's fetch, waiting for the broker's
acknowledgements (two round trips per batch) and the broker itself on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from aiokafka.producer.message_accumulator import BatchBuilder
from prometheus_client import CollectorRegistry

from contracts.schema import parse_event
from contracts.settings import Settings
from feature_store import FeatureConfig, PartitionWorker, RocksDBStore
from feature_store.samples import SampleConfig
from ops.bench.bench_ingest import SHARED
from serving.scorer import ItemCatalog
from streaming.ingest import IngestService, RawMessage
from streaming.metrics import IngestMetrics
from streaming.partitions import OwnedPartitions
from streaming.routing import Router, owner_partition
from streaming.sink import Acknowledgements, Delivery
from streaming.sources import read_events

BATCH_BYTES = 512 * 1024  # streaming.app.BATCH_BYTES


class Acked:
    """A broker acknowledgement's metadata (the offset the sink reads)."""

    offset = 0


class RecordBatchSink:
    """The :class:`streaming.sink.Sink` of this benchmark: each record appended to an aiokafka
    record batch (built, checksummed, then dropped), every send acknowledged at once."""

    def __init__(self) -> None:
        self.bytes: dict[str, int] = defaultdict(int)
        self.records: dict[str, int] = defaultdict(int)

    async def send(self, topic: str, key: bytes | None, value: bytes, *args: Any) -> Any:
        return self._acked()

    async def send_many(
        self,
        topic: str,
        partition: int,
        records: Iterable[tuple[bytes | None, bytes | None]],
        timestamps: Sequence[float] | None = None,
    ) -> Delivery:
        batch, last = BatchBuilder(BATCH_BYTES, 0), -1
        for i, (key, value) in enumerate(records):
            stamp = None if timestamps is None else round(timestamps[i] * 1000)
            appended = batch.append(key=key, value=value, timestamp=stamp)
            if appended is None:
                batch._build()
                batch = BatchBuilder(BATCH_BYTES, 0)
                appended = batch.append(key=key, value=value, timestamp=stamp)
            last = appended.offset
            self.bytes[topic] += len(value or b"")
            self.records[topic] += 1
        if batch.record_count():
            batch._build()
        return Delivery([self._acked()], last)

    async def flush(self) -> None:
        return None

    def take_owed(self) -> Acknowledgements:
        return Acknowledgements()  # acknowledged at once: nothing owed

    @staticmethod
    def _acked() -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        future.set_result(Acked())
        return future


def messages(path: str, limit: int, settings: Settings) -> list[RawMessage]:
    events, _ = read_events(path, "taobao")
    offsets: dict[int, int] = defaultdict(int)
    out = []
    for event in events[:limit]:
        partition = owner_partition(event.user_id, settings.topics.events_partitions)
        out.append(RawMessage(partition, offsets[partition], event.to_json(), time.time()))
        offsets[partition] += 1
    return out


def service(settings: Settings, folder: str, narrow_ids: bool) -> tuple[IngestService, Any]:
    metrics = IngestMetrics.create(CollectorRegistry())
    config = FeatureConfig.from_settings(settings)
    if narrow_ids:
        config = FeatureConfig(config.state, config.clusters, SampleConfig(narrow_ids=True))
    partitions = OwnedPartitions(settings, folder, metrics, config)
    for p in range(settings.topics.events_partitions):
        partitions.workers[p] = PartitionWorker(RocksDBStore(Path(folder) / f"p{p}"), p, config)
    sink = RecordBatchSink()
    router = Router(sink, settings.topics.events_partitions, metrics.routed.labels(agent="ingest"))
    return IngestService(settings, sink, partitions, ItemCatalog(), metrics, router), sink


async def run(args: argparse.Namespace) -> None:
    settings = Settings.from_env()
    msgs = messages(args.data or str(SHARED), args.events, settings)
    batches = [msgs[i : i + args.batch] for i in range(0, len(msgs), args.batch)]
    warm = max(1, len(batches) // 10)
    counted = [m for batch in batches[warm:] for m in batch]
    gc.collect()
    gc.freeze()  # as the worker does (streaming.worker.Worker)
    gc.set_threshold(20_000, 10, 10)
    started = time.process_time()
    for m in counted:
        parse_event(
            m.value or b"", max_bytes=settings.max_event_bytes, min_ts=settings.min_event_ts
        )
    parse_us = 1e6 * (time.process_time() - started) / len(counted)
    with tempfile.TemporaryDirectory(prefix="bench-batch-path-") as folder:
        ingest, sink = service(settings, folder, args.narrow_ids)
        for batch in batches[:warm]:
            await ingest.handle(batch)
        samples = settings.topics.samples
        bytes0, records0 = sink.bytes[samples], sink.records[samples]
        profile = cProfile.Profile() if args.profile else None
        cpu, wall = time.process_time(), time.perf_counter()
        if profile is not None:
            profile.enable()
        for batch in batches[warm:]:
            await ingest.handle(batch)
        if profile is not None:
            profile.disable()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        n_samples = sink.records[samples] - records0
        per_sample = (sink.bytes[samples] - bytes0) / max(1, n_samples)
    us = 1e6 * cpu / len(counted)
    print(
        f"{Path(args.data or SHARED).name}: {len(counted):,} events in batches of {args.batch:,}"
        f"{' (narrow ids)' if args.narrow_ids else ''}: batch path {us:.1f} us CPU/event "
        f"({len(counted) / wall:,.0f} events/s wall), {n_samples:,} samples of {per_sample:,.0f} "
        f"bytes; baseline parse + validate only {parse_us:.1f} us/event: ratio {us / parse_us:.1f}x"
    )
    if profile is not None:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a Taobao-format log (default: taobao_stream)")
    parser.add_argument("--events", type=int, default=110_300, help="the log's first N events")
    parser.add_argument("--batch", type=int, default=2_000, help="events per handled batch")
    parser.add_argument("--narrow-ids", action="store_true", help="SampleConfig.narrow_ids")
    parser.add_argument("--profile", action="store_true", help="cProfile the counted batches")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
