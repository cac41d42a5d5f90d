"""Hot reload: watch ``model-updates`` (and the snapshot folder at start), load and verify each
new snapshot beside the serving one, then swap it in with one reference assignment.

A snapshot that is truncated, has a wrong checksum, another model config or a newer format, that
is a symlink or a special file, is too large or too slow to read, or (where a key is set) is not
signed by the trainer is refused, counted (``twinstream_model_reload_failures_total{reason}``,
reasons :data:`FAILURE_REASONS`) and logged; the serving model stays. An announcement names a
version, read from the worker's own snapshot folder, never a path. Between checkpoints the
trainer's deltas are applied in place (:mod:`serving.delta_follow`). Loading runs on this
watcher's thread, never on the request path.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import orjson
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from contracts.settings import Settings
from models import ModelConfig
from serving.delta_follow import DeltaFollower
from serving.fetch import fetch_checkpoint, latest_version
from serving.manifest import REASONS, SnapshotError
from serving.metrics import ScoringMetrics
from serving.priority import lower_thread_priority
from serving.scorer import ModelHolder
from serving.signing import Signer
from serving.snapshot import list_snapshots, prune_snapshots, version_dir

log = logging.getLogger(__name__)

# A reload hashes and copies in chunks and then sleeps nine times as long as each chunk took.
# p99 during 30 reloads over the p99 between them (bench_scoring C, two runs each): 1.28x at this
# duty, 1.53-1.66x at 0.25; a reload takes ~2.2x longer (about 0.7 s for 100 MB of weights).
LOADER_DUTY = 0.1


ANNOUNCEMENT_MAX_BYTES = 64 * 1024
MAX_DELTA_BYTES = 4 << 30
REPLAY_MARGIN_S = 120.0  # deltas are read again from this long before a checkpoint was made
FETCHED_KEPT = 2  # checkpoints fetched from the trainer kept in the worker's folder
RESYNC_RETRY_S = 5.0  # a refused checkpoint is tried again for a gap after this long
MAX_VERSION = 10**15  # beyond any real count of snapshots and deltas
FAILURE_REASONS = (*REASONS, "bad_announcement")  # twinstream_model_reload_failures_total


def header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> bytes | None:
    """The value of Kafka header ``name`` (the first one), or None."""
    for key, value in headers or ():
        if key == name:
            return value
    return None


class SnapshotWatcher:
    """Serves the trainer's snapshots: from the worker's own folder at start, then each one
    announced on ``model-updates`` (by version, read from ``snapshot_dir``: an announcement never
    names a path of its own). Where a key is set every announcement and manifest must carry the
    trainer's HMAC (:mod:`serving.signing`). A refused message is logged and counted
    (``twinstream_model_reload_failures_total{reason}``) and never blocks a later one."""

    def __init__(
        self,
        settings: Settings,
        holder: ModelHolder,
        metrics: ScoringMetrics,
        snapshot_dir: Path | None = None,
    ) -> None:
        self.settings, self.holder, self.metrics = settings, holder, metrics
        self.snapshot_dir = snapshot_dir
        self.signer = Signer.of(settings.model_hmac_key)
        max_delta = min(settings.model_max_file_bytes, MAX_DELTA_BYTES)
        self.follower = DeltaFollower(
            holder,
            metrics,
            self.signer,
            max_delta,
            self.refuse,
            twin=settings.delta_twin,
            gil_share=settings.delta_gil_share,
            catch_up_after_s=settings.delta_catch_up_after_s,
        )
        self._consumer: KafkaConsumer | None = None
        self._tried, self._tried_at = 0, 0.0  # the last checkpoint a resync tried, and when
        self._asked_at = 0.0  # when the trainer was last asked for its newest checkpoint
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="snapshot-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def refuse(self, reason: str, what: object, detail: object) -> None:
        """Count and log one refused message or snapshot."""
        self.metrics.reload_failures.labels(reason=reason).inc()
        log.warning("refused %s (%s): %s", what, reason, detail)

    def load(self, path: Path, manifest_sha256: str | None = None) -> bool:
        """Verify and swap in the snapshot at ``path``; False when refused or not newer."""
        from serving.loading import load_snapshot

        try:
            snapshot = load_snapshot(
                path,
                expect=self._expected_config(),
                manifest_sha256=manifest_sha256,
                duty=LOADER_DUTY,
                signer=self.signer,
                max_file_bytes=self.settings.model_max_file_bytes,
                timeout_s=self.settings.model_read_timeout_s,
            )
        except SnapshotError as err:
            self.refuse(err.reason, f"snapshot {path}", err)
            return False
        if not self.holder.swap(snapshot):
            return False
        self.follower.twins.start(snapshot)  # on its own thread: deltas need not wait for it
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
        self._consumer = consumer = self._new_consumer()
        try:
            while not self._stop.is_set():
                with self.follower.paced():  # parsing MiBs of deltas, beside requests
                    batch = consumer.poll(timeout_ms=200)
                self.follower.behind = _backlog(consumer) > 0
                records = [r for part in batch.values() for r in part]
                self.handle(sorted(records, key=lambda r: r.offset))
                self._fetch_while_empty()
        finally:
            consumer.close()

    def handle(self, records: Sequence[ConsumerRecord]) -> None:
        """Act on a batch of ``model-updates`` records in order: delta chunks go to the
        follower; of the checkpoint announcements only the newest valid one matters (a refused
        one falls back to the one before). When buffered deltas cannot chain on the serving
        version, their checkpoint is loaded and the topic read again from its time."""
        announcements = [r for r in records if header(r.headers, "kind") != b"delta"]
        for record in records:
            try:
                if header(record.headers, "kind") == b"delta":
                    self.follower.chunk(record.value, header(record.headers, "mac"))
                elif record is announcements[-1]:
                    self._newest_announcement(announcements)
            except Exception:  # one bad message must never stop the watcher's thread
                log.exception("model-updates offset %d", record.offset)
                self.metrics.reload_failures.labels(reason="corrupt").inc()
            wanted = self.follower.wants_checkpoint()
            if wanted is not None and self._resync(wanted):
                return

    def _fetch_while_empty(self) -> None:
        """Without a model, ask the trainer for its newest checkpoint every few seconds (a
        worker may start before the trainer's checkpoint server)."""
        url = self.settings.checkpoint_url
        if self.holder.model is not None or not url or self.snapshot_dir is None:
            return
        if time.monotonic() - self._asked_at < RESYNC_RETRY_S:
            return
        self._asked_at = time.monotonic()
        version = latest_version(url.rstrip("/"))
        if version > 0 and (path := self._local(version)) is not None and self.load(path):
            self.follower.catch_up()
            self._seek_to_model_time()

    def _newest_announcement(self, announcements: Sequence[ConsumerRecord]) -> None:
        for record in reversed(announcements):
            if self._announced(record.value, header(record.headers, "mac")):
                self.follower.catch_up()
                return

    def _resync(self, version: int) -> bool:
        """Load checkpoint ``version`` and read the topic again from its time; True when the
        consumer was moved (the rest of the batch is read again)."""
        if self.snapshot_dir is None:
            return False
        remote = bool(self.settings.checkpoint_url)
        if not remote and not os.path.lexists(version_dir(self.snapshot_dir, version)):
            return False  # not written yet: its announcement will come
        if self._tried == version and time.monotonic() - self._tried_at < RESYNC_RETRY_S:
            return False
        self._tried, self._tried_at = version, time.monotonic()
        path = self._local(version)
        if path is None or not self.load(path):
            return False
        self.follower.catch_up()
        return self._seek_to_model_time()

    def _seek_to_model_time(self) -> bool:
        """Move the consumer to a little before the serving model was made (the deltas after
        it follow); False without a model or a consumer."""
        model, consumer = self.holder.model, self._consumer
        manifest = getattr(model, "manifest", None)
        if manifest is None or consumer is None:
            return False
        tp = TopicPartition(self.settings.topics.model_updates, 0)
        wanted = int((manifest.created - REPLAY_MARGIN_S) * 1000)
        found = consumer.offsets_for_times({tp: max(0, wanted)}).get(tp)
        if found is None:
            return False
        consumer.seek(tp, found.offset)
        return True

    def _load_latest(self, folder: Path) -> None:
        """The newest snapshot of ``folder`` that verifies (a refused one never hides older
        valid ones)."""
        for path in reversed(list_snapshots(folder)):
            if self.load(path):
                return
        url = self.settings.checkpoint_url
        if url and (version := latest_version(url.rstrip("/"))) > 0:
            fetched = self._local(version)
            if fetched is not None:
                self.load(fetched)

    def _announced(self, value: bytes | None, mac: bytes | None) -> bool:
        """Load the announced snapshot; True when it is served (or already served)."""
        if value is None or len(value) > ANNOUNCEMENT_MAX_BYTES:
            self.refuse("bad_announcement", "announcement", "empty or too large")
            return False
        if not self.signer.verify("announcement", value, None if mac is None else mac.decode()):
            self.refuse("signature", "announcement", "no or a wrong HMAC")
            return False
        try:
            message = orjson.loads(value)
            version, digest = message["version"], message.get("manifest_sha256")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.refuse("bad_announcement", "announcement", value[:80])
            return False
        if not isinstance(version, int) or not 0 < version < MAX_VERSION:
            self.refuse("bad_announcement", "announcement", f"version {version!r}")
            return False
        current = self.holder.model
        if current is not None and current.version >= version:
            return True
        digest = digest if isinstance(digest, str) else None
        path = self._local(version, digest)
        return path is not None and self.load(path, digest)

    def _local(self, version: int, digest: str | None = None) -> Path | None:
        """Checkpoint ``version`` in this worker's folder, fetched from the trainer first when
        it is not there and ``checkpoint_url`` is set; None (refusal counted) when neither."""
        if self.snapshot_dir is None:
            self.refuse("missing", f"snapshot v{version}", "this worker has no snapshot folder")
            return None
        path = version_dir(self.snapshot_dir, version)
        url = self.settings.checkpoint_url
        if os.path.lexists(path) or not url:
            return path
        try:
            fetched = fetch_checkpoint(
                url.rstrip("/"),
                version,
                self.snapshot_dir,
                self.signer,
                self.settings.model_max_file_bytes,
                self.settings.model_read_timeout_s,
                digest,
            )
        except SnapshotError as err:
            self.refuse(err.reason, f"checkpoint v{version} from {url}", err)
            return None
        prune_snapshots(self.snapshot_dir, FETCHED_KEPT)
        return fetched

    def _new_consumer(self) -> KafkaConsumer:
        """A consumer of ``model-updates`` from a little before the serving model was made
        (the deltas after it), or from the end."""
        topic = self.settings.topics.model_updates
        consumer = KafkaConsumer(
            **self.settings.kafka_config(),
            enable_auto_commit=False,
            fetch_max_bytes=64 << 20,
            max_partition_fetch_bytes=16 << 20,
        )
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_end(tp)
        consumer.position(tp)
        self._consumer = consumer
        self._seek_to_model_time()
        return consumer


def _backlog(consumer: KafkaConsumer) -> int:
    """Records of the assigned partitions past the consumer's position, as of its last fetch."""
    waiting = 0
    for tp in consumer.assignment():
        high = consumer.highwater(tp)
        if high is not None:
            waiting += max(0, high - consumer.position(tp))
    return waiting
