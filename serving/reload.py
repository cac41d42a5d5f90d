"""Hot reload: watch ``model-updates`` (and the snapshot folder at start), load and verify each
new snapshot beside the serving one, then swap it in with one reference assignment.

A snapshot that is truncated, has a wrong checksum, another model config or a newer format is
refused, counted (``twinstream_model_reload_failures_total{reason}``) and logged; the serving model
stays. Loading runs on this watcher's thread, never on the request path.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import cast

import orjson
from kafka import KafkaConsumer, TopicPartition

from contracts.settings import Settings
from models import ModelConfig
from serving.metrics import ScoringMetrics
from serving.scorer import ModelHolder

log = logging.getLogger(__name__)

LOADER_NICENESS = 10
# A reload hashes and copies in chunks and then sleeps nine times as long as each chunk took.
# p99 during 30 reloads over the p99 between them (bench_scoring C, two runs each): 1.28x at this
# duty, 1.53-1.66x at 0.25; a reload takes ~2.2x longer (about 0.7 s for 100 MB of weights).
LOADER_DUTY = 0.1


def lower_thread_priority(niceness: int = LOADER_NICENESS) -> bool:
    """Make the calling thread yield the CPU to the scoring threads (Linux sets the niceness
    of one thread by its native id); False where the platform cannot.

    A reload hashes and copies tens of MiB; at normal priority it takes a core from requests
    on a small machine, at a higher niceness it runs in the time they leave.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):
        return False
    return True


class SnapshotWatcher:
    def __init__(
        self,
        settings: Settings,
        holder: ModelHolder,
        metrics: ScoringMetrics,
        snapshot_dir: Path | None = None,
    ) -> None:
        self.settings, self.holder, self.metrics = settings, holder, metrics
        self.snapshot_dir = snapshot_dir
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="snapshot-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def load(self, path: Path, manifest_sha256: str | None = None) -> bool:
        """Verify and swap in the snapshot at ``path``; False when refused or not newer."""
        from serving.loading import load_snapshot
        from serving.manifest import SnapshotError

        try:
            snapshot = load_snapshot(
                path,
                expect=self._expected_config(),
                manifest_sha256=manifest_sha256,
                duty=LOADER_DUTY,
            )
        except SnapshotError as err:
            self.metrics.reload_failures.labels(reason=err.reason).inc()
            log.warning("refused snapshot %s: %s", path, err)
            return False
        if not self.holder.swap(snapshot):
            return False
        self.metrics.reloads.inc()
        self.metrics.model_version.set(snapshot.version)
        self.metrics.model_created.set(snapshot.manifest.created)
        log.warning("serving snapshot v%d from %s", snapshot.version, path)
        return True

    def _expected_config(self) -> ModelConfig | None:
        current = self.holder.model
        return None if current is None else cast(ModelConfig, getattr(current, "config", None))

    def _run(self) -> None:
        lower_thread_priority()
        if self.snapshot_dir is not None:
            self._load_latest(self.snapshot_dir)
        consumer = self._consumer()
        try:
            while not self._stop.is_set():
                batch = consumer.poll(timeout_ms=200)
                records = [r for part in batch.values() for r in part]
                if records:  # only the newest announcement matters; older ones are superseded
                    self._announced(max(records, key=lambda r: r.offset).value)
        finally:
            consumer.close()

    def _load_latest(self, folder: Path) -> None:
        from serving.snapshot import latest_snapshot

        path = latest_snapshot(folder)
        if path is not None:
            self.load(path)

    def _announced(self, value: bytes) -> None:
        try:
            message = orjson.loads(value)
            path, digest = Path(message["path"]), message.get("manifest_sha256")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.metrics.reload_failures.labels(reason="bad_announcement").inc()
            return
        self.load(path, digest if isinstance(digest, str) else None)

    def _consumer(self) -> KafkaConsumer:
        topic = self.settings.topics.model_updates
        consumer = KafkaConsumer(**self.settings.kafka_config(), enable_auto_commit=False)
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_end(tp)
        consumer.position(tp)
        return consumer
