"""``twinstream drift-ack`` (ops/drift_cli.py): the real command writes a new epoch into the
baseline file of the deployment's state folder (or ``--baseline``), says what the file holds with
``--show``, and a drift monitor reading that file learns a new baseline."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry

from serving.drift import AttentionDrift, DriftConfig
from serving.drift_baseline import BaselineFile, BaselineLearner
from tests.support.processes import twinstream


def test_drift_ack_writes_a_new_epoch_every_worker_reads(tmp_path: Path) -> None:
    env = dict(os.environ) | {"TWINSTREAM_STATE_DIR": str(tmp_path / "state")}
    path = tmp_path / "state" / "drift-baseline.json"
    shown = twinstream("drift-ack", "--show", env=env)
    assert shown.returncode == 0 and "no baseline yet" in shown.stdout
    first = twinstream("drift-ack", env=env)
    assert first.returncode == 0 and "epoch 1" in first.stdout, first.stderr
    state = BaselineFile(path).read()
    assert state is not None and state.epoch == 1
    assert "epoch 1, acknowledged" in twinstream("drift-ack", "--show", env=env).stdout

    now = [100.0]
    drift = AttentionDrift(
        DriftConfig(baseline_s=10.0, baseline_path=path), CollectorRegistry(), clock=lambda: now[0]
    )
    drift._learner = BaselineLearner(epoch=1, since=0.0)  # a pinned baseline of epoch 1
    drift._baseline = drift._learner.pin(now[0], None)
    other = tmp_path / "other.json"
    assert "epoch 1" in twinstream("drift-ack", "--baseline", str(other), env=env).stdout
    assert drift.baseline is not None  # another file: nothing changes here
    os.utime(path, (0, 0))  # the next write is seen as a change whatever the clock's resolution
    assert "epoch 2" in twinstream("drift-ack", env=env).stdout
    now[0] += 1
    assert drift.traffic_drift() is None and drift.baseline is None
