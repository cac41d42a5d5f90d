"""The online trainer: ``samples`` → progressive validation → learn → snapshots + ``model-updates``.

Per step (DESIGN.md section 6): poll up to ``batch_size`` sample messages, decode them, score them
with the current model (eval mode, lookup-only id mapping, exactly as the scorer would see them),
update the sliding-window AUC / GAUC / logloss and the attention reference window, then observe
the ids (new ids get rows, which are re-initialised along with their optimizer moments) and take
one optimizer step. Every ``snapshot_every_steps`` steps or ``snapshot_every_s`` seconds it writes
a snapshot and announces it on ``model-updates``.

**Offsets live in the snapshot, not in Kafka.** The manifest records the last trained offset of
every partition; on start the trainer restores weights, id maps and optimizer moments from the
newest valid snapshot and seeks each partition to that offset + 1 (the beginning when there is no
snapshot). A crash therefore repeats at most the samples trained after the last snapshot, and the
samples before it are never trained again. The consumer group ``{prefix}trainer`` only assigns
partitions; offsets are committed to it after each snapshot for lag monitoring, never read.
Under ``torchrun`` each rank reads the partitions p % world_size == rank instead
(:mod:`trainer.distributed`).

SIGTERM / SIGINT (or :meth:`OnlineTrainer.stop`) finish the current step, write a final snapshot
and return. ``max_steps`` and ``idle_timeout_s`` bound a run (tests, replays).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from kafka import (
    ConsumerRebalanceListener,
    KafkaConsumer,
    KafkaProducer,
    OffsetAndMetadata,
    TopicPartition,
)
from kafka.consumer.fetcher import ConsumerRecord
from kafka.record import util as kafka_record_util

from contracts.settings import Settings
from feature_store.sample_format import SampleArrays, decode_samples
from models.base import CTRModel, ModelConfig
from models.batch import Batch
from models.embedding import EmbeddingTable
from models.registry import MODEL_NAMES, build_model
from serving.attention import AttentionWindow, attended_sequence, attention_stats
from serving.features import FeatureMapper, MapperConfig, NewRows, RawIds, select_rows
from serving.loading import load_snapshot
from serving.manifest import SnapshotError
from serving.snapshot import (
    SnapshotContent,
    WrittenSnapshot,
    list_snapshots,
    load_optimizer_state,
    prune_snapshots,
    remove_stale_temps,
    snapshot_version,
    write_snapshot,
)
from trainer.distributed import Agreement, Comm, assigned_partitions, init_comm
from trainer.loop import Learner, LearnerConfig, resolve_device
from trainer.metrics import SlidingWindowMetrics
from trainer.telemetry import TrainerTelemetry

MIN_LEARN_ROWS = 2
log = logging.getLogger("twinstream.trainer")
# Per-partition fetch size. A backlog is read one fetch of each partition after another, so this
# bounds how far one partition runs ahead of the others (16 MiB: whole partitions one after
# another). 1 MiB (Kafka's default) interleaves every ~100-300 samples; 64 KiB interleaves finer
# but cost 30% of the throughput in round trips (DARE dim 32, Taobao users: 2,658 vs 3,764 rows/s).
PARTITION_FETCH_BYTES = 1024 * 1024
# kafka-python checks record CRCs in pure Python unless the ``crc32c`` C extension is installed:
# 6.2 s of a 26 s run over 85 MB of samples (same run). Without it the trainer relies on the
# broker's CRC check on produce and on the sample decoder's framing checks.
FAST_CRC = kafka_record_util.crc32c_c is not None


@dataclass(frozen=True)
class TrainerConfig:
    """How the online trainer runs. ``None`` disables an option; there are no magic values."""

    model_config: ModelConfig
    snapshot_dir: Path
    model: str = "dare"
    batch_size: int = 512  # sample messages per step (each holds a positive and its negatives)
    snapshot_every_steps: int | None = 50
    snapshot_every_s: float | None = 30.0
    keep: int = 5  # newest snapshots kept on disk
    metrics_window: int = 10_000  # target rows in the sliding AUC / GAUC / logloss window
    device: str = "auto"  # "auto": CUDA when available, else CPU
    lr: float = 0.01
    encoder_lr: float = 0.001  # the model's sequence encoder, if it has one (trainer.loop)
    l2: float = 1e-6
    min_count: int = 1  # IdMap frequency filter
    ttl: int | None = None  # IdMap expiry (observe calls); None: ids never expire
    max_clusters: int | None = None  # cluster-sequence length; None: longest in the batch
    max_wait_s: float = 0.5  # longest wait to fill a batch
    log_every_s: float = 10.0
    save_optimizer: bool = True  # optimizer moments in the snapshot (exact resume)
    audit_log: Path | None = None  # JSON lines of the offsets trained per step (".rank{r}" added)
    group_id: str | None = None  # None: "{prefix}trainer"
    session_timeout_s: float = 10.0  # consumer-group session (a killed trainer's partitions)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model not in MODEL_NAMES:
            raise ValueError(f"unknown model {self.model!r}; choose one of {MODEL_NAMES}")
        object.__setattr__(self, "snapshot_dir", Path(self.snapshot_dir))
        checks = {
            "batch_size must be >= 1": self.batch_size >= 1,
            "snapshot_every_steps must be >= 1 or None": self.snapshot_every_steps is None
            or self.snapshot_every_steps >= 1,
            "snapshot_every_s must be > 0 or None": self.snapshot_every_s is None
            or self.snapshot_every_s > 0,
            "keep must be >= 1": self.keep >= 1,
            "metrics_window must be >= 1": self.metrics_window >= 1,
            "max_wait_s must be > 0": self.max_wait_s > 0,
        }
        problems = [message for message, ok in checks.items() if not ok]
        if problems:
            raise ValueError("invalid TrainerConfig: " + "; ".join(problems))

    @property
    def mapper_config(self) -> MapperConfig:
        return MapperConfig.for_model(self.model_config, self.min_count, self.ttl)


@dataclass
class RunReport:
    """What one :meth:`OnlineTrainer.run` did."""

    steps: int = 0  # optimizer steps in this run
    rows: int = 0  # target rows trained in this run (all ranks)
    messages: int = 0  # sample messages consumed by this rank
    bad_messages: int = 0  # undecodable messages skipped by this rank
    snapshots: list[Path] = field(default_factory=list)
    stopped_by: str = ""  # "max_steps", "idle", "signal"
    seconds: float = 0.0  # wall time of the run
    busy_seconds: float = 0.0  # wall time of the steps that trained (poll, decode, learn)

    @property
    def rows_per_s(self) -> float:
        """Training throughput: rows over the time of the steps that had data."""
        return self.rows / self.busy_seconds if self.busy_seconds > 0 else 0.0


@dataclass
class _Clock:
    """Timers of the loop (monotonic seconds) and whether anything was trained since the last
    snapshot."""

    start: float
    last_data: float
    last_snap: float
    last_log: float
    dirty: bool = False

    @classmethod
    def starting(cls) -> _Clock:
        now = time.monotonic()
        return cls(now, now, now, now)

    def snapshotted(self) -> None:
        self.dirty, self.last_snap = False, time.monotonic()

    def log_due(self, every_s: float) -> bool:
        now = time.monotonic()
        if now - self.last_log < every_s:
            return False
        self.last_log = now
        return True


@dataclass(frozen=True)
class _Step:
    """The sample messages of one step, decoded (``arrays`` None: no labelled rows)."""

    records: list[ConsumerRecord]
    arrays: SampleArrays | None
    bad: int

    @property
    def rows(self) -> int:
        return 0 if self.arrays is None else self.arrays.size


class OnlineTrainer:
    """Consumes ``samples`` until stopped; see the module docstring.

    In-process use (tests, notebooks)::

        trainer = OnlineTrainer(Settings.from_env(), TrainerConfig(model_config=cfg,
                                                                   snapshot_dir=Path("snaps")))
        report = trainer.run(idle_timeout_s=10)
    """

    def __init__(
        self,
        settings: Settings,
        config: TrainerConfig,
        comm: Comm | None = None,
        telemetry: TrainerTelemetry | None = None,
    ):
        self.settings, self.config = settings, config
        self.telemetry = telemetry or TrainerTelemetry.create()  # Prometheus metrics
        device = resolve_device(None if config.device == "auto" else config.device)
        if comm is None:
            comm, device = init_comm(device)
        self.comm = comm
        torch.manual_seed(config.seed)
        model = build_model(config.model, config.model_config)
        self.learner = Learner(
            model,
            LearnerConfig(
                lr=config.lr, l2=config.l2, encoder_lr=config.encoder_lr, device=str(device)
            ),
        )
        self.mapper = FeatureMapper(config.mapper_config)
        self.metrics = SlidingWindowMetrics(config.metrics_window)
        self.attention = AttentionWindow(config.metrics_window)
        self.offsets: dict[int, int] = {}  # partition → last offset consumed
        self.version = 0  # of the newest snapshot
        self.rows_total = 0  # target rows trained since the first start
        self.last_snapshot: WrittenSnapshot | None = None
        self._item_tables, self._category_tables = _tables(self.model)
        self._stop = threading.Event()
        self._loss = float("nan")  # moving average of the training loss
        self._restore()
        self._check_same_start()
        self.comm.broadcast_model(self.model)

    @property
    def model(self) -> CTRModel:
        return self.learner.model

    @property
    def step(self) -> int:
        return self.learner.steps

    def stop(self) -> None:
        """Ask the loop to finish its step, snapshot and return (thread-safe)."""
        self._stop.set()

    # ------------------------------------------------------------ resume

    def _restore(self) -> None:
        """Resume from the newest snapshot that verifies; older ones are tried in turn. New
        snapshots are numbered after every folder on disk, refused ones included."""
        if self.comm.is_main:
            for stale in remove_stale_temps(self.config.snapshot_dir):
                log.warning("removed %s, left by an interrupted snapshot", stale)
        snapshots = list_snapshots(self.config.snapshot_dir)
        for path in reversed(snapshots):
            try:
                self._load(path)
                break
            except SnapshotError as err:
                if err.reason == "config":
                    raise
                log.error("snapshot %s refused (%s), trying an older one", path, err)
        else:
            log.info("no usable snapshot in %s: training from scratch", self.config.snapshot_dir)
        if snapshots:
            self.version = max(self.version, snapshot_version(snapshots[-1]))

    def _check_same_start(self) -> None:
        """Every rank must resume from the same snapshot (a snapshot folder every rank sees)."""
        starts = self.comm.gather_floats([self.version, self.step, self.rows_total])
        if any(start != starts[0] for start in starts):
            raise RuntimeError(f"ranks resumed from different snapshots (version, step): {starts}")

    def _load(self, path: Path) -> None:
        cfg = self.config
        snap = load_snapshot(path, cfg.model_config, expect_model=cfg.model)
        self.model.load_state_dict(snap.model.state_dict())
        self.mapper.load_state_dict(snap.mapper.state_dict())
        blob = snap.optimizer_bytes()
        if blob is not None:
            self._load_moments(path, blob)
        m = snap.manifest
        if m.topic == self.settings.topics.samples:
            self.offsets = dict(m.offsets)
        else:
            log.warning("snapshot offsets are for %r; %r from the start", m.topic, self.topic)
        self.learner.steps, self.rows_total, self.version = m.step, m.samples, m.version
        log.info("resumed from %s: step %d, offsets %s", path, m.step, self.offsets)

    def _load_moments(self, path: Path, blob: bytes) -> None:
        """Optimizer moments, when they fit this trainer's optimizers. A snapshot written before
        the sequence encoder got its own optimizer (``encoder_lr``) holds one optimizer fewer:
        its weights still load, and the moments start again (Adam re-estimates them in ~100
        steps)."""
        try:
            load_optimizer_state(blob, self.learner.optimizers)
        except SnapshotError as err:
            log.warning("%s: optimizer moments not restored (%s); they start afresh", path, err)

    # ------------------------------------------------------------ the loop

    @property
    def topic(self) -> str:
        return self.settings.topics.samples

    def run(self, max_steps: int | None = None, idle_timeout_s: float | None = None) -> RunReport:
        """Train until stopped (signal, :meth:`stop`), ``max_steps`` steps in this run, or no
        data on any partition for ``idle_timeout_s``; then snapshot and return."""
        report = RunReport()
        with self._signals(), self._kafka() as (consumer, producer), self._audit() as audit:
            self._loop(consumer, producer, audit, report, max_steps, idle_timeout_s)
        return report

    def _loop(
        self,
        consumer: KafkaConsumer,
        producer: KafkaProducer | None,
        audit: IO[str] | None,
        report: RunReport,
        max_steps: int | None,
        idle_timeout_s: float | None,
    ) -> None:
        clock = _Clock.starting()
        while True:
            agreed = self._iteration(consumer, audit, report, clock, idle_timeout_s)
            self.telemetry.sample_lag(consumer)
            if clock.dirty and (agreed.due or self._steps_due(agreed)):
                self._snapshot(producer, consumer, report)
                clock.snapshotted()
            report.seconds = time.monotonic() - clock.start
            if clock.log_due(self.config.log_every_s):
                self._log_progress(report)
            report.stopped_by = self._stop_reason(agreed, report, max_steps)
            if report.stopped_by:
                break
        if clock.dirty:
            self._snapshot(producer, consumer, report, final=True)
        report.seconds = time.monotonic() - clock.start
        self._log_progress(report)

    def _iteration(
        self,
        consumer: KafkaConsumer,
        audit: IO[str] | None,
        report: RunReport,
        clock: _Clock,
        idle_timeout_s: float | None,
    ) -> Agreement:
        """Poll, agree with the other ranks, account the offsets, train when anyone has rows."""
        began = time.monotonic()
        step = self._next_step(consumer)
        if not consumer.assignment():  # still joining the group: not idle yet
            clock.last_data = time.monotonic()
        due = clock.dirty and self._time_due(began - clock.last_snap)
        idle = idle_timeout_s is not None and began - clock.last_data > idle_timeout_s
        agreed = self.comm.agree(step.rows, self._stop.is_set(), due, idle)
        self._account(step, report, audit)
        if agreed.rows > 0:
            self._train(step, agreed)
            report.steps, report.rows = report.steps + 1, report.rows + agreed.rows
            report.busy_seconds += time.monotonic() - began
            clock.dirty, clock.last_data = True, began
        return agreed

    def _time_due(self, since_snapshot_s: float) -> bool:
        every = self.config.snapshot_every_s
        return every is not None and since_snapshot_s >= every

    def _steps_due(self, agreed: Agreement) -> bool:
        every = self.config.snapshot_every_steps
        return agreed.rows > 0 and every is not None and self.step % every == 0

    @staticmethod
    def _stop_reason(agreed: Agreement, report: RunReport, max_steps: int | None) -> str:
        if agreed.stop:
            return "signal"
        if max_steps is not None and report.steps >= max_steps:
            return "max_steps"
        return "idle" if agreed.idle else ""

    # ------------------------------------------------------------ one step

    def _next_step(self, consumer: KafkaConsumer) -> _Step:
        records = self._poll(consumer)
        blobs = [r.value for r in records if r.value is not None]
        arrays, bad = self._decode(blobs)
        if arrays is not None:
            arrays = select_rows(arrays, ~np.isnan(arrays.label))  # labelled rows only
            arrays = arrays if arrays.size else None
        return _Step(records, arrays, bad)

    def _poll(self, consumer: KafkaConsumer) -> list[ConsumerRecord]:
        """Up to ``batch_size`` messages, waiting at most ``max_wait_s`` to fill the batch."""
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + self.config.max_wait_s
        while len(records) < self.config.batch_size and not self._stop.is_set():
            wait_ms = int(max(0.0, deadline - time.monotonic()) * 1000)
            want = self.config.batch_size - len(records)
            for part in consumer.poll(timeout_ms=max(wait_ms, 1), max_records=want).values():
                records.extend(part)
            if time.monotonic() >= deadline:
                break
        return records

    def _decode(self, blobs: list[bytes]) -> tuple[SampleArrays | None, int]:
        """Decode a batch; when some messages are malformed, drop those and count them."""
        if not blobs:
            return None, 0
        seq_len, clusters = self.config.model_config.seq_len, self.config.max_clusters
        try:
            return decode_samples(blobs, seq_len, clusters), 0
        except ValueError:
            good = [b for b in blobs if _decodes(b)]
            log.warning("skipped %d undecodable sample messages", len(blobs) - len(good))
            arrays = decode_samples(good, seq_len, clusters) if good else None
            return arrays, len(blobs) - len(good)

    def _account(self, step: _Step, report: RunReport, audit: IO[str] | None) -> None:
        """Advance the offsets past every consumed message; log them to the audit file."""
        by_partition: dict[int, list[int]] = {}
        for r in step.records:
            by_partition.setdefault(r.partition, []).append(r.offset)
            self.offsets[r.partition] = max(r.offset, self.offsets.get(r.partition, -1))
        report.messages += len(step.records)
        report.bad_messages += step.bad
        self.telemetry.consumed([r.timestamp for r in step.records], step.bad)
        if audit is not None and by_partition:
            line = {"step": self.step + 1, "rank": self.comm.rank, "offsets": by_partition}
            audit.write(json.dumps(line) + "\n")
            audit.flush()

    def _train(self, step: _Step, agreed: Agreement) -> None:
        """Progressive validation on the local rows, then one (synchronised) learning step."""
        started = time.perf_counter()
        arrays = step.arrays
        scored = None if arrays is None else self._validate(arrays)
        ids = _no_ids() if arrays is None else self.mapper.raw_ids(arrays)
        self.mapper.observe(self.comm.gather_ids(ids))
        self._reset_rows(self.mapper.drain_new_rows())
        batch = None
        if arrays is not None and scored is not None:
            batch = self.mapper.refresh(scored, arrays)  # new ids now have rows
        if batch is not None and batch.size < MIN_LEARN_ROWS:
            # BatchNorm cannot train on one row (e.g. the stream's first click, before the
            # sampler knows any item to draw negatives from): it is scored, not learnt
            log.info("step with %d row(s): scored, not learnt", batch.size)
            batch = None
        loss = self.comm.learn(self.learner, batch)
        if loss is not None:
            self._loss = loss if np.isnan(self._loss) else 0.98 * self._loss + 0.02 * loss
        self.rows_total += agreed.rows
        self.telemetry.trained(step.rows, time.perf_counter() - started, self._loss)

    def _validate(self, arrays: SampleArrays) -> Batch:
        """Score before learning (eval mode, unknown ids on row 0, as the scorer sees them);
        returns the scored batch."""
        batch = self.mapper.to_batch(arrays, learn=False)
        out = self.learner.predict(batch)
        probs = torch.sigmoid(out.logits).float().cpu().numpy()
        self.metrics.update(arrays.label, probs, arrays.user)
        attends = type(self.model).attends
        if out.attention is not None and attends is not None:
            on_device = batch.to(self.learner.device)
            mask, category = attended_sequence(on_device, attends)
            stats = attention_stats(out.attention, mask, category, on_device.target_category)
            self.attention.update(stats)
        return batch

    @torch.no_grad()
    def _reset_rows(self, new: NewRows) -> None:
        """Fresh random rows (same on every rank: seeded by the id maps' step) and zero
        optimizer moments for the rows the id maps just handed out."""
        if len(new) == 0:
            return
        device = self.learner.device
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.config.seed * 1_000_003 + self.mapper.items.step)
            pairs = ((self._item_tables, new.items), (self._category_tables, new.categories))
            for tables, rows in pairs:
                for table in tables:
                    table.reset_rows(rows)
                    self._zero_moments(table.weight, rows.to(table.weight.device))

    def _zero_moments(self, weight: torch.Tensor, rows: torch.Tensor) -> None:
        for opt in self.learner.optimizers:
            for value in opt.state.get(weight, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == weight.shape:
                    value[rows] = 0

    # ------------------------------------------------------------ snapshots

    def snapshot(self) -> WrittenSnapshot | None:
        """Write a snapshot now (one process, outside :meth:`run`; not announced)."""
        self._require_local("snapshot")
        self._snapshot(None, None, RunReport(), final=True)
        return self.last_snapshot

    def learn_arrays(self, arrays: SampleArrays) -> None:
        """One step on decoded samples without Kafka (one process): validate, then learn."""
        self._require_local("learn_arrays")
        labelled = select_rows(arrays, ~np.isnan(arrays.label))
        if labelled.size:
            self._train(_Step([], labelled, 0), Agreement(labelled.size, False, False, False))

    def _require_local(self, what: str) -> None:
        if self.comm.world_size > 1:
            raise RuntimeError(f"{what}() is for one process; ranks step together in run()")

    def _snapshot(
        self,
        producer: KafkaProducer | None,
        consumer: KafkaConsumer | None,
        report: RunReport,
        final: bool = False,
    ) -> None:
        """All ranks: gather offsets, metrics, attention; rank 0 writes and announces. A failed
        periodic write (disk full) is logged and training goes on; a failed final one raises."""
        self.comm.before_snapshot(self.model)
        offsets = self.comm.gather_offsets(self.offsets)
        metrics = self._metrics()
        counts = self.comm.sum_counts(self.attention.counts())
        self.version += 1
        if not self.comm.is_main:
            self.telemetry.snapshot(self.version, time.time(), metrics)
            return
        try:
            written = write_snapshot(
                self.config.snapshot_dir, self.version, self._content(offsets, metrics, counts)
            )
        except OSError:
            log.exception("snapshot v%d failed at step %d", self.version, self.step)
            if final:
                raise
            return
        self.telemetry.snapshot(self.version, written.manifest.created, metrics)
        self.last_snapshot = written
        report.snapshots.append(written.path)
        prune_snapshots(self.config.snapshot_dir, self.config.keep)
        log.info("snapshot v%d at step %d: %s", self.version, self.step, written.path)
        if producer is not None:
            announce(producer, self.settings.topics.model_updates, written)
        if consumer is not None:
            _commit_for_lag(consumer, self.topic, offsets)

    def _content(
        self, offsets: dict[int, int], metrics: dict[str, float | None], counts: np.ndarray
    ) -> SnapshotContent:
        attends = type(self.model).attends
        return SnapshotContent(
            model_name=self.config.model,
            model=self.model,
            mapper=self.mapper,
            topic=self.topic,
            offsets=offsets,
            step=self.step,
            samples=self.rows_total,
            metrics=metrics,
            attention=None if attends is None else self.attention.reference(attends, counts),
            optimizers=self.learner.optimizers if self.config.save_optimizer else (),
        )

    def _metrics(self) -> dict[str, float | None]:
        """Window metrics, averaged over ranks weighted by their window sizes."""
        m = self.metrics
        mine = [m.auc, m.gauc, m.logloss, float(len(m)), self._loss]
        per_rank = np.array(self.comm.gather_floats(mine), dtype=np.float64)  # (R, 5)
        weights = per_rank[:, 3]
        out = {
            name: _weighted(per_rank[:, j], weights)
            for j, name in enumerate(("auc", "gauc", "logloss"))
        }
        out["window_rows"] = float(weights.sum())
        out["loss"] = _weighted(per_rank[:, 4], np.ones_like(weights))
        out["ranks"] = float(per_rank.shape[0])
        return out

    def _log_progress(self, report: RunReport) -> None:
        if not self.comm.is_main:
            return
        m = self.metrics
        log.info(
            "step %d | %d rows (%.0f rows/s) | window AUC %.4f GAUC %.4f logloss %.4f | "
            "loss %.4f | v%d",
            self.step,
            report.rows,
            report.rows_per_s,
            m.auc,
            m.gauc,
            m.logloss,
            self._loss,
            self.version,
        )

    # ------------------------------------------------------------ resources

    @contextmanager
    def _kafka(self) -> Iterator[tuple[KafkaConsumer, KafkaProducer | None]]:
        consumer = self._consumer()
        producer = None
        if self.comm.is_main:
            producer = KafkaProducer(bootstrap_servers=self.settings.bootstrap_servers)
        try:
            yield consumer, producer
        finally:
            consumer.close()
            if producer is not None:
                producer.close(timeout=10)

    def _consumer(self) -> KafkaConsumer:
        cfg, s = self.config, self.settings
        common: dict[str, Any] = {
            "bootstrap_servers": s.bootstrap_servers,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_partition_fetch_bytes": PARTITION_FETCH_BYTES,
            "fetch_max_bytes": 64 * 1024 * 1024,
            "check_crcs": FAST_CRC,
        }
        if self.comm.world_size > 1:
            consumer = KafkaConsumer(**common)
            self._assign(consumer)
            return consumer
        group = cfg.group_id or f"{s.topics.prefix}trainer"
        session_ms = int(cfg.session_timeout_s * 1000)
        consumer = KafkaConsumer(
            group_id=group,
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(1000, session_ms // 3),
            **common,
        )
        # Join with the topic's metadata known: a first join without it assigns nothing and a
        # second rebalance follows at once, where kafka-python 3.0.12 can stall (never synced).
        self._partitions(consumer)
        consumer.subscribe([self.topic], listener=_SeekOnAssign(self, consumer))
        return consumer

    def _partitions(self, consumer: KafkaConsumer, timeout_s: float = 60.0) -> list[int]:
        """The partitions of ``samples``, waiting for the topic to exist."""
        deadline = time.monotonic() + timeout_s
        while not (partitions := consumer.partitions_for_topic(self.topic)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {self.topic!r} has no partitions after {timeout_s}s")
            time.sleep(0.2)
        return sorted(partitions)

    def _assign(self, consumer: KafkaConsumer) -> None:
        """Distributed: this rank's partitions, no group; seek past the snapshot's offsets."""
        partitions = self._partitions(consumer)
        mine = assigned_partitions(partitions, self.comm.rank, self.comm.world_size)
        tps = [TopicPartition(self.topic, p) for p in mine]
        consumer.assign(tps)
        self.seek(consumer, tps)
        log.info("rank %d reads partitions %s", self.comm.rank, mine)

    def seek(self, consumer: KafkaConsumer, tps: Sequence[TopicPartition]) -> None:
        """Each partition to its last consumed offset + 1, or its beginning."""
        for tp in tps:
            if tp.partition in self.offsets:
                consumer.seek(tp, self.offsets[tp.partition] + 1)
            else:
                consumer.seek_to_beginning(tp)

    @contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: object) -> None:
            self.stop()

        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    @contextmanager
    def _audit(self) -> Iterator[IO[str] | None]:
        path = self.config.audit_log
        if path is None:
            yield None
            return
        if self.comm.world_size > 1:
            path = path.with_name(f"{path.name}.rank{self.comm.rank}")
        with open(path, "a") as fh:
            yield fh


class _SeekOnAssign(ConsumerRebalanceListener):
    """Consumer-group assignment: position each new partition from the trainer's offsets."""

    def __init__(self, trainer: OnlineTrainer, consumer: KafkaConsumer) -> None:
        self.trainer, self.consumer = trainer, consumer

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        return None

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.trainer.seek(self.consumer, list(assigned))
        log.info("assigned %s", sorted(tp.partition for tp in assigned))


def announce(producer: KafkaProducer, topic: str, written: WrittenSnapshot) -> None:
    """Send ``{"version", "path", "model", "created", "manifest_sha256"}`` to ``model-updates``
    and wait for the broker; a failure is logged (the snapshot on disk stays valid)."""
    m = written.manifest
    message = {
        "version": m.version,
        "path": str(written.path.resolve()),
        "model": m.model,
        "created": m.created,
        "manifest_sha256": written.manifest_sha256,
    }
    try:
        producer.send(topic, key=m.model.encode(), value=json.dumps(message).encode()).get(30)
    except Exception as err:  # kafka-python raises many error types; the snapshot is written
        log.error("could not announce snapshot v%d on %s: %r", m.version, topic, err)


def _commit_for_lag(consumer: KafkaConsumer, topic: str, offsets: dict[int, int]) -> None:
    """Commit the snapshot's offsets to the group, for lag monitoring only (never read back)."""
    if consumer.config.get("group_id") is None:
        return
    mine = {tp.partition for tp in consumer.assignment()}
    commits = {
        TopicPartition(topic, p): OffsetAndMetadata(o + 1, "", -1)
        for p, o in offsets.items()
        if p in mine
    }
    try:
        consumer.commit(commits)
    except Exception as err:  # a rebalance in progress: the next snapshot commits again
        log.debug("lag commit skipped: %r", err)


def _tables(model: CTRModel) -> tuple[list[EmbeddingTable], list[EmbeddingTable]]:
    """The model's item tables and category tables (by attribute name: ``*item``, ``*category``)."""
    items, categories = [], []
    for name, module in model.named_modules():
        if not isinstance(module, EmbeddingTable):
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf.endswith("item"):
            items.append(module)
        elif leaf.endswith("category"):
            categories.append(module)
        else:
            raise ValueError(f"embedding table {name!r} is neither an item nor a category table")
    return items, categories


def _decodes(blob: bytes) -> bool:
    try:
        decode_samples([blob], recent_length=1)
    except ValueError:
        return False
    return True


def _no_ids() -> RawIds:
    return RawIds(np.zeros(0, np.int64), np.zeros(0, np.int64))


def _weighted(values: np.ndarray, weights: np.ndarray) -> float | None:
    ok = np.isfinite(values) & (weights > 0)
    if not ok.any():
        return None
    return float(np.average(values[ok], weights=weights[ok]))
