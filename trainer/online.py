"""The online trainer: sample messages → progressive validation → learn → snapshots.

Per step (ARCHITECTURE.md section 6): take up to ``batch_size`` sample messages from the source
(:mod:`trainer.source`: the ``samples`` topic, or a list), decode them, score them with the current
model (eval mode, lookup-only id mapping, exactly as the scorer would see them), update the
sliding-window AUC / GAUC / logloss and the attention reference window, then observe the ids (new
ids get rows, which are re-initialised along with their optimizer moments) and take one optimizer
step. Every ``snapshot_every_steps`` steps or ``snapshot_every_s`` seconds it writes a snapshot
and, reading Kafka, announces it on ``model-updates`` (:mod:`trainer.announce`).

**Offsets live in the snapshot, not in Kafka.** The manifest records the last trained offset of
every partition; on start the trainer restores weights, id maps and optimizer moments from the
newest valid snapshot and its source resumes each partition at that offset + 1 (the beginning when
there is no snapshot). A crash therefore repeats at most the samples trained after the last
snapshot, and the samples before it are never trained again. Under ``torchrun`` each rank reads
the partitions p % world_size == rank (:mod:`trainer.distributed`).

SIGTERM / SIGINT (or :meth:`OnlineTrainer.stop`) finish the current step, write a final snapshot
and return. ``max_steps`` and ``idle_timeout_s`` bound a run (tests, replays).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

import numpy as np
import torch

from contracts.settings import Settings
from feature_store.sample_format import SampleArrays
from models.base import CTRModel
from models.batch import Batch
from models.registry import build_model
from serving.attention import AttentionWindow, attended_sequence, attention_stats
from serving.features import FeatureMapper, NewRows, RawIds
from serving.signing import Signer
from serving.snapshot import (
    SnapshotContent,
    WrittenSnapshot,
    prune_snapshots,
    write_snapshot,
)
from trainer.announce import SnapshotAnnouncer
from trainer.chained import checkpoint_done, delta_chain, publish_checkpoint
from trainer.config import RunReport, TrainerConfig
from trainer.deltas import DeltaChain, DeltaStats, TouchedRows, read_published
from trainer.distributed import Agreement, Comm, init_comm
from trainer.fresh_rows import EmbeddingTables
from trainer.loop import Learner, LearnerConfig, resolve_device
from trainer.metrics import SlidingWindowMetrics, across_ranks
from trainer.pacing import LoopClock, stop_on_signals, stop_reason
from trainer.resume import resume
from trainer.sample_batch import DecodedBatch, decode_batch, labelled
from trainer.source import KafkaSampleSource, SampleSource
from trainer.telemetry import TrainerTelemetry

MIN_LEARN_ROWS = 2
log = logging.getLogger("twinstream.trainer")


@dataclass
class _Run:
    """What one :meth:`OnlineTrainer.run` holds: where samples come from, who hears of snapshots
    (rank 0 reading Kafka), the audit file, the report and the loop's timers."""

    source: SampleSource
    announcer: SnapshotAnnouncer | None
    audit: IO[str] | None
    report: RunReport
    clock: LoopClock
    chain: DeltaChain | None = None  # with delta_every_s (trainer.deltas)


class OnlineTrainer:
    """Trains on sample messages until stopped; see the module docstring.

    In-process use (tests, notebooks)::

        trainer = OnlineTrainer(Settings.from_env(), TrainerConfig(model_config=cfg,
                                                                   snapshot_dir=Path("snaps")))
        report = trainer.run(idle_timeout_s=10)  # the samples topic
        report = trainer.run(max_steps=5, source=MemorySampleSource.from_partitions({0: blobs}))
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
        self.last_snapshot: WrittenSnapshot | None = None
        self._tables = EmbeddingTables.of(self.model)
        self.touched = TouchedRows(self.model) if config.delta_every_s is not None else None
        self.learner.on_rows = self.touched
        self.delta_pauses: list[float] = []  # seconds the loop spent cutting each delta
        self.delta_stats = DeltaStats()  # what the last run's publisher sent
        self.checkpoint_times: list[tuple[float, float]] = []  # (paused, written) seconds each
        self.checkpoint_server: object | None = None  # trainer.checkpoint_server, while it runs
        self._stop = threading.Event()
        self._loss = float("nan")  # moving average of the training loss
        resumed = resume(self.learner, self.mapper, config, self.topic, tidy=comm.is_main)
        self.learner.steps = resumed.step
        self.offsets = dict(resumed.offsets)  # partition → last offset consumed
        # of the newest snapshot, or of the newest delta a previous run sent (numbered after)
        self.version = max(resumed.version, read_published(config.snapshot_dir))
        # the checkpoint holding exactly this state (deltas may chain on it), 0 when none does
        self.resumed_from = resumed.loaded if resumed.loaded == self.version else 0
        self.rows_total = resumed.rows  # target rows trained since the first start
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

    def _check_same_start(self) -> None:
        """Every rank must resume from the same snapshot (a snapshot folder every rank sees)."""
        starts = self.comm.gather_floats([self.version, self.step, self.rows_total])
        if any(start != starts[0] for start in starts):
            raise RuntimeError(f"ranks resumed from different snapshots (version, step): {starts}")

    # ------------------------------------------------------------ the loop

    @property
    def topic(self) -> str:
        return self.settings.topics.samples

    def run(
        self,
        max_steps: int | None = None,
        idle_timeout_s: float | None = None,
        source: SampleSource | None = None,
    ) -> RunReport:
        """Train until stopped (signal, :meth:`stop`), ``max_steps`` steps in this run, or no
        data on any partition for ``idle_timeout_s``; then snapshot and return. ``source``
        defaults to the ``samples`` topic, whose snapshots are announced on ``model-updates``;
        those of another source are not announced."""
        with (
            stop_on_signals(self.stop),
            self._connect(source) as (src, announcer),
            self._audit() as audit,
        ):
            run = _Run(src, announcer, audit, RunReport(), LoopClock.of(self.config))
            with delta_chain(self, run):
                self._loop(run, max_steps, idle_timeout_s)
        return run.report

    def _loop(self, run: _Run, max_steps: int | None, idle_timeout_s: float | None) -> None:
        clock, report = run.clock, run.report
        while True:
            agreed = self._iteration(run, idle_timeout_s)
            run.source.sample_lag(self.telemetry)
            if run.chain is not None:
                checkpoint_done(self, run.chain, run)
            if run.chain is not None and run.chain.live and clock.delta_due(time.monotonic()):
                self.version += 1
                run.chain.cut(self.version, self.model, self.mapper, self.offsets)
                clock.delta_cut()
            if clock.dirty and (agreed.due or clock.steps_due(agreed.rows > 0, self.step)):
                self._publish_snapshot(run)
                clock.snapshotted()
            report.seconds = clock.elapsed()
            if clock.log_due():
                self._log_progress(report)
            report.stopped_by = stop_reason(agreed, report, max_steps)
            if report.stopped_by:
                break
        if clock.dirty:
            self._publish_snapshot(run, final=True)
        report.seconds = clock.elapsed()
        self._log_progress(report)

    def _iteration(self, run: _Run, idle_timeout_s: float | None) -> Agreement:
        """Poll, agree with the other ranks, account the offsets, train when anyone has rows."""
        clock, report = run.clock, run.report
        began = time.monotonic()
        step = self._next_step(run.source)
        if not run.source.assigned():  # still joining the group: not idle yet
            clock.last_data = time.monotonic()
        due, idle = clock.time_due(began), clock.idle(began, idle_timeout_s)
        if run.chain is not None and not run.chain.live:
            due = due or clock.delta_due(began)  # a delta chain starts with a checkpoint
        agreed = self.comm.agree(step.rows, self._stop.is_set(), due, idle)
        self._account(step, run)
        if agreed.rows > 0:
            self._train(step, agreed)
            report.steps, report.rows = report.steps + 1, report.rows + agreed.rows
            report.busy_seconds += time.monotonic() - began
            clock.trained(began)
        return agreed

    # ------------------------------------------------------------ one step

    def _next_step(self, source: SampleSource) -> DecodedBatch:
        cfg = self.config
        records = source.next_batch(cfg.batch_size, cfg.max_wait_s, self._stop.is_set)
        return decode_batch(records, cfg.model_config.seq_len, cfg.max_clusters)

    def _account(self, step: DecodedBatch, run: _Run) -> None:
        """Advance the offsets past every consumed message; log them to the audit file."""
        by_partition: dict[int, list[int]] = {}
        for r in step.records:
            by_partition.setdefault(r.partition, []).append(r.offset)
            self.offsets[r.partition] = max(r.offset, self.offsets.get(r.partition, -1))
        run.report.messages += len(step.records)
        run.report.bad_messages += step.bad
        self.telemetry.consumed([r.timestamp for r in step.records], step.bad)
        if run.audit is not None and by_partition:
            line = {"step": self.step + 1, "rank": self.comm.rank, "offsets": by_partition}
            run.audit.write(json.dumps(line) + "\n")
            run.audit.flush()

    def _train(self, step: DecodedBatch, agreed: Agreement) -> None:
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

    def _reset_rows(self, new: NewRows) -> None:
        """Fresh rows and zero moments for the rows the id maps just handed out, the same on
        every rank (seeded by the id maps' step)."""
        if (on_rows := self.learner.on_rows) is not None:
            for tables, rows in (
                (self._tables.items, new.items),
                (self._tables.categories, new.categories),
            ):
                for table in tables:
                    on_rows(table.weight, rows)
        seed = self.config.seed * 1_000_003 + self.mapper.items.step
        self._tables.reset_rows(new, self.learner.optimizers, seed, self.learner.device)

    # ------------------------------------------------------------ snapshots

    def snapshot(self) -> WrittenSnapshot | None:
        """Write a snapshot now (one process, outside :meth:`run`; not announced)."""
        self._require_local("snapshot")
        self._snapshot(RunReport(), final=True)
        return self.last_snapshot

    def learn_arrays(self, arrays: SampleArrays) -> None:
        """One step on decoded samples without a source (one process): validate, then learn."""
        self._require_local("learn_arrays")
        rows = labelled(arrays)
        if rows.size:
            self._train(DecodedBatch([], rows, 0), Agreement(rows.size, False, False, False))

    def _require_local(self, what: str) -> None:
        if self.comm.world_size > 1:
            raise RuntimeError(f"{what}() is for one process; ranks step together in run()")

    def _publish_snapshot(self, run: _Run, final: bool = False) -> None:
        """Snapshot; rank 0 announces what it wrote and tells the source its offsets. With
        deltas, a checkpoint written on its own thread (:meth:`_checkpoint`)."""
        if run.chain is not None:
            publish_checkpoint(self, run.chain, run, final)
            return
        written = self._snapshot(run.report, final)
        if written is None:
            return
        if run.announcer is not None:
            run.announcer.announce(written)
        run.source.snapshot_written(written.manifest.offsets)

    def _gather(self) -> tuple[dict[int, int], dict[str, float | None], np.ndarray]:
        """All ranks: offsets, metrics and attention counts for the next snapshot version."""
        self.comm.before_snapshot(self.model)
        offsets = self.comm.gather_offsets(self.offsets)
        metrics = self._metrics()
        counts = self.comm.sum_counts(self.attention.counts())
        self.version += 1
        return offsets, metrics, counts

    def _snapshot(self, report: RunReport, final: bool = False) -> WrittenSnapshot | None:
        """All ranks: gather offsets, metrics, attention; rank 0 writes and returns the snapshot.
        A failed periodic write (disk full) is logged and training goes on (None); a failed final
        one raises."""
        offsets, metrics, counts = self._gather()
        if not self.comm.is_main:
            self.telemetry.snapshot(self.version, time.time(), metrics)
            return None
        try:
            written = write_snapshot(
                self.config.snapshot_dir,
                self.version,
                self._content(offsets, metrics, counts),
                Signer.of(self.settings.model_hmac_key),
            )
        except OSError:
            log.exception("snapshot v%d failed at step %d", self.version, self.step)
            if final:
                raise
            return None
        self.telemetry.snapshot(self.version, written.manifest.created, metrics)
        self.last_snapshot = written
        report.snapshots.append(written.path)
        prune_snapshots(self.config.snapshot_dir, self.config.keep)
        log.info("snapshot v%d at step %d: %s", self.version, self.step, written.path)
        return written

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
        return across_ranks(self.comm.gather_floats(mine))

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
    def _connect(
        self, source: SampleSource | None
    ) -> Iterator[tuple[SampleSource, SnapshotAnnouncer | None]]:
        """The source, started from the trainer's offsets; with the default one (the samples
        topic), rank 0 also announces its snapshots on ``model-updates``."""
        announces = source is None and self.comm.is_main
        if source is None:
            comm = self.comm
            source = KafkaSampleSource(self.settings, self.config, comm.rank, comm.world_size)
        source.start(lambda: self.offsets)
        announcer = None
        try:
            if announces:
                announcer = SnapshotAnnouncer(self.settings)
            yield source, announcer
        finally:
            source.close()
            if announcer is not None:
                announcer.close()

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


def _no_ids() -> RawIds:
    return RawIds(np.zeros(0, np.int64), np.zeros(0, np.int64))
