"""The online trainer's checkpoints and deltas when it publishes deltas (``delta_every_s``):
a chain of deltas on ``model-updates`` (:mod:`trainer.deltas`) and checkpoints cut on the
training thread and written on their own (:mod:`trainer.checkpoint`), announced once written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from serving.signing import Signer
from serving.snapshot import prune_snapshots
from trainer.announce import SnapshotAnnouncer
from trainer.checkpoint import start_checkpoint
from trainer.checkpoint_server import CheckpointServer
from trainer.deltas import DeltaChain, DeltaPublisher

if TYPE_CHECKING:
    from trainer.online import OnlineTrainer

log = logging.getLogger("twinstream.trainer")
Run = Any  # trainer.online._Run (source, announcer, report, chain)


@contextmanager
def delta_chain(trainer: OnlineTrainer, run: Run) -> Iterator[None]:
    """With ``delta_every_s``, a chain of deltas for this run (one process only); with
    ``checkpoint_http_port``, the checkpoints served over HTTP meanwhile."""
    port = trainer.settings.checkpoint_http_port
    if port is not None and trainer.comm.is_main:
        server = CheckpointServer(trainer.config.snapshot_dir, trainer.settings.http_host, port)
        trainer.checkpoint_server = server.start()
        try:
            with _deltas(trainer, run):
                yield
        finally:
            server.close()
    else:
        with _deltas(trainer, run):
            yield


@contextmanager
def _deltas(trainer: OnlineTrainer, run: Run) -> Iterator[None]:
    if trainer.touched is None:
        yield
        return
    if trainer.comm.world_size > 1:
        raise RuntimeError("delta_every_s is for one process; ranks publish snapshots")
    if run.announcer is None:
        run.announcer = SnapshotAnnouncer(trainer.settings)
    publisher = DeltaPublisher(trainer.settings, trainer.config.snapshot_dir, {})
    run.chain = DeltaChain(publisher, trainer.touched, trainer.config.model)
    if trainer.resumed_from:  # nothing was published after the checkpoint resumed from
        run.chain.resume(trainer.resumed_from, trainer.mapper)
    trainer.learner.on_rows = run.chain.on_rows
    try:
        yield
    finally:
        trainer.learner.on_rows = trainer.touched
        publisher.close()
        trainer.delta_stats, trainer.delta_pauses = publisher.stats, run.chain.pauses


def publish_checkpoint(trainer: OnlineTrainer, chain: DeltaChain, run: Run, final: bool) -> None:
    """Cut a checkpoint (the training thread pauses only for that) and write it on a thread
    of its own; following a delta chain it takes the version of a delta cut with it (the
    same state), else it starts a new chain. One at a time: while one is written the next
    is skipped (the final one waits)."""
    if chain.busy() and not final:
        return
    checkpoint_done(trainer, chain, run, wait=True)
    began = time.perf_counter()
    chained = chain.live
    if chained:
        chain.cut(trainer.version + 1, trainer.model, trainer.mapper, trainer.offsets)
    offsets, metrics, counts = trainer._gather()  # version + 1: the delta's, when chained
    content = trainer._content(offsets, metrics, counts)
    optimizers = trainer.learner.optimizers if trainer.config.save_optimizer else []
    signer = Signer.of(trainer.settings.model_hmac_key)
    ckpt = start_checkpoint(
        trainer.config.snapshot_dir, trainer.version, content, signer, optimizers
    )
    chain.started(ckpt, trainer.mapper, restart=not chained)
    ckpt.pause_s = time.perf_counter() - began  # everything the training thread did for it
    trainer.telemetry.snapshot(trainer.version, time.time(), metrics)
    if final:
        checkpoint_done(trainer, chain, run, wait=True)


def checkpoint_done(
    trainer: OnlineTrainer, chain: DeltaChain, run: Run, wait: bool = False
) -> None:
    """Announce the checkpoint whose write ended (waiting for it with ``wait``)."""
    ckpt = chain.finished(wait)
    if ckpt is None:
        return
    if ckpt.written is None:
        log.error("checkpoint v%d failed: %r", ckpt.version, ckpt.error)
        return
    written = ckpt.written
    trainer.checkpoint_times.append((ckpt.pause_s, ckpt.write_s))
    log.info(
        "checkpoint v%d: training paused %.3f s, written in %.1f s (%s)",
        ckpt.version,
        ckpt.pause_s,
        ckpt.write_s,
        written.path,
    )
    trainer.last_snapshot = written
    run.report.snapshots.append(written.path)
    prune_snapshots(trainer.config.snapshot_dir, trainer.config.keep)
    if run.announcer is not None:
        run.announcer.announce(written)
    run.source.snapshot_written(written.manifest.offsets)
