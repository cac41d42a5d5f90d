"""Resuming the online trainer from its newest valid snapshot.

The newest snapshot that verifies gives back the weights, the id maps, the optimizer moments (when
they fit this trainer's optimizers) and the counters: step, target rows trained, version, and the
last offset trained of each partition of ``samples``. When a newer snapshot is refused (truncated,
corrupt) the one before it is tried, and so on; a snapshot of another model configuration stops
the trainer instead. New snapshots are numbered after every folder on disk, refused ones included.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from serving.features import FeatureMapper
from serving.loading import load_snapshot
from serving.manifest import SnapshotError
from serving.snapshot import (
    list_snapshots,
    load_optimizer_state,
    remove_stale_temps,
    snapshot_version,
)
from trainer.config import TrainerConfig
from trainer.loop import Learner

log = logging.getLogger("twinstream.trainer")


@dataclass(frozen=True)
class Resumed:
    """Where training resumes (all zero, no offsets: from scratch)."""

    step: int = 0
    rows: int = 0  # target rows trained since the first start
    version: int = 0  # of the newest snapshot folder; the next one is version + 1
    offsets: dict[int, int] = field(default_factory=dict)  # partition → last offset trained
    loaded: int = 0  # the version of the snapshot loaded (0: none)


def resume(
    learner: Learner, mapper: FeatureMapper, config: TrainerConfig, topic: str, tidy: bool
) -> Resumed:
    """Load the newest valid snapshot of ``config.snapshot_dir`` into ``learner`` and ``mapper``;
    ``tidy`` (one rank only) first removes what interrupted snapshots left behind."""
    if tidy:
        for stale in remove_stale_temps(config.snapshot_dir):
            log.warning("removed %s, left by an interrupted snapshot", stale)
    snapshots = list_snapshots(config.snapshot_dir)
    resumed = Resumed()
    for path in reversed(snapshots):
        try:
            resumed = _load(path, learner, mapper, config, topic)
            break
        except SnapshotError as err:
            if err.reason == "config":
                raise
            log.error("snapshot %s refused (%s), trying an older one", path, err)
    else:
        log.info("no usable snapshot in %s: training from scratch", config.snapshot_dir)
    if snapshots:
        resumed = replace(resumed, version=max(resumed.version, snapshot_version(snapshots[-1])))
    return resumed


def _load(
    path: Path, learner: Learner, mapper: FeatureMapper, config: TrainerConfig, topic: str
) -> Resumed:
    snap = load_snapshot(path, config.model_config, expect_model=config.model)
    learner.model.load_state_dict(snap.model.state_dict())
    mapper.load_state_dict(snap.mapper.state_dict())
    blob = snap.optimizer_bytes()
    if blob is not None:
        _load_moments(path, blob, learner)
    m = snap.manifest
    offsets: dict[int, int] = {}
    if m.topic == topic:
        offsets = dict(m.offsets)
    else:
        log.warning("snapshot offsets are for %r; %r from the start", m.topic, topic)
    log.info("resumed from %s: step %d, offsets %s", path, m.step, offsets)
    return Resumed(m.step, m.samples, m.version, offsets, loaded=m.version)


def _load_moments(path: Path, blob: bytes, learner: Learner) -> None:
    """Optimizer moments, when they fit the learner's optimizers. A snapshot written before the
    sequence encoder got its own optimizer (``encoder_lr``) holds one optimizer fewer: its weights
    still load, and the moments start again (Adam re-estimates them in ~100 steps)."""
    try:
        load_optimizer_state(blob, learner.optimizers)
    except SnapshotError as err:
        log.warning("%s: optimizer moments not restored (%s); they start afresh", path, err)
