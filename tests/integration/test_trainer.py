"""The online trainer against the real broker: it learns, writes and announces snapshots; a
``kill -9`` mid-stream resumes from the checkpoint without training earlier samples again;
SIGTERM writes a final snapshot; two ranks split the partitions and stay bit-identical.

Samples are made the way the ingest worker makes them (``PartitionWorker`` over a
``MemoryStore``) from the ``taobao_users`` log (the real one, or its generated stand-in on a
machine without ../shared/data) or the synthetic generator, and sent to a fresh
``samples`` topic with 4 partitions. The trainers run as real processes (``python -m
ops.train_cli``, ``torchrun``) with an audit log of the offsets they consumed per step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from kafka import KafkaProducer

from contracts.settings import Settings
from feature_store import decode_samples
from models import ModelConfig
from serving.loading import load_snapshot
from serving.manifest import MANIFEST_FILE
from serving.snapshot import latest_snapshot, list_snapshots
from streaming.admin import ensure_topics, read_topic
from streaming.sources import read_events
from tests.support.data import BehaviourLog
from tests.support.events import sample_messages, synthetic_events
from tests.support.processes import REPO, deployment_env, tail
from tests.support.trainers import CAPACITY_ARGS, MODEL_ARGS, audit_lines, offsets_of
from tests.support.waiting import wait_until
from trainer.config import TrainerConfig
from trainer.online import OnlineTrainer

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PARTITIONS = 4

torch.set_num_threads(1)


# ---------------------------------------------------------------- helpers


def produce(settings: Settings, per_partition: dict[int, list[bytes]]) -> dict[int, int]:
    """Send each partition's samples to that partition; returns the end offset of each."""
    ensure_topics(settings, {settings.topics.samples: PARTITIONS, settings.topics.model_updates: 1})
    producer = KafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        linger_ms=20,
        max_request_size=16 * 1024 * 1024,
    )
    try:
        for partition, blobs in per_partition.items():
            for blob in blobs:
                producer.send(settings.topics.samples, blob, partition=partition)
        producer.flush(60)
    finally:
        producer.close()
    return {p: len(blobs) for p, blobs in per_partition.items()}


def rows_per_message(per_partition: dict[int, list[bytes]]) -> int:
    return sum(decode_samples(b, recent_length=1).size for b in per_partition.values())


def trainer_env(settings: Settings) -> dict[str, str]:
    return {**deployment_env(settings), "OMP_NUM_THREADS": "1"}


def start_trainer(settings: Settings, tmp: Path, name: str, *extra: str) -> subprocess.Popen[bytes]:
    args = [
        *MODEL_ARGS,
        *CAPACITY_ARGS,
        "--snapshot-dir",
        str(tmp / "snaps"),
        "--audit-log",
        str(tmp / f"{name}.audit"),
        "--batch-size",
        "16",
        "--snapshot-every-steps",
        "25",
        "--snapshot-every-s",
        "600",
        "--keep",
        "50",
        "--session-timeout-s",
        "6",
        "--max-wait-s",
        "0.2",
        *extra,
    ]
    with open(tmp / f"{name}.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "ops.train_cli", *args],
            cwd=REPO,
            env=trainer_env(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def manifest(folder: Path) -> dict:
    path = latest_snapshot(folder)
    assert path is not None
    return json.loads((path / MANIFEST_FILE).read_bytes())


def expected_range(start_after: dict[str, int] | dict[int, int], p: int, end: int) -> list[int]:
    first = {int(k): v for k, v in start_after.items()}.get(p, -1) + 1
    return list(range(first, end))


# ---------------------------------------------------------------- it learns, snapshots, announces


def taobao_samples(log: BehaviourLog, n_events: int = 6000) -> dict[int, list[bytes]]:
    events, _ = read_events(log.path, "taobao")
    return sample_messages(events[:n_events], PARTITIONS)


def test_trainer_learns_and_announces_verified_snapshots(
    settings: Settings, tmp_path: Path, taobao_log: BehaviourLog
) -> None:
    per_partition = taobao_samples(taobao_log)
    ends = produce(settings, per_partition)
    cfg = TrainerConfig(
        model_config=ModelConfig(n_items=1 << 15, n_categories=1 << 11, dim=8, seq_len=50, topk=10),
        snapshot_dir=tmp_path / "snaps",
        model="dare",
        batch_size=128,
        snapshot_every_steps=10,
        snapshot_every_s=600.0,
        keep=3,
        metrics_window=3000,
        device="cpu",
    )
    trainer = OnlineTrainer(settings, cfg)
    report = trainer.run(idle_timeout_s=3.0)

    assert report.stopped_by == "idle"
    assert report.messages == sum(ends.values())
    assert report.rows == rows_per_message(per_partition)
    assert trainer.metrics.auc > 0.6 and trainer.metrics.gauc > 0.6  # predict-before-learn
    kept = list_snapshots(cfg.snapshot_dir)
    assert len(kept) == 3 and len(report.snapshots) >= 5  # older ones pruned

    updates = [json.loads(r.value) for r in read_topic(settings, settings.topics.model_updates)]
    assert [u["version"] for u in updates] == list(range(1, len(report.snapshots) + 1))
    last = updates[-1]
    assert set(last) == {"version", "path", "model", "created", "manifest_sha256"}
    assert last["model"] == "dare" and Path(last["path"]) == kept[-1].resolve()
    snap = load_snapshot(
        Path(last["path"]), cfg.model_config, manifest_sha256=last["manifest_sha256"]
    )
    assert snap.manifest.offsets == {p: end - 1 for p, end in ends.items()}
    assert snap.manifest.samples == report.rows and snap.manifest.step == report.steps
    assert snap.manifest.metrics["auc"] == pytest.approx(trainer.metrics.auc)
    assert snap.manifest.attention is not None and snap.manifest.attention["rows"] == 3000

    arrays = decode_samples(per_partition[0][:50], cfg.model_config.seq_len)
    expected = trainer.learner.predict_proba_many(trainer.mapper.to_batch(arrays, learn=False))
    assert np.array_equal(snap.predict_proba(arrays), expected)


# ---------------------------------------------------------------- crash and resume


def test_kill_9_mid_stream_resumes_from_the_checkpoint_and_never_retrains_before_it(
    settings: Settings, tmp_path: Path
) -> None:
    per_partition = sample_messages(synthetic_events(users=150, seed=5), PARTITIONS)
    ends = produce(settings, per_partition)
    total_rows = rows_per_message(per_partition)
    snaps = tmp_path / "snaps"

    # A: kill -9 once a checkpoint exists and A has consumed past it (mid-interval).
    a = start_trainer(settings, tmp_path, "a")
    try:
        v2 = snaps / "v00000002" / MANIFEST_FILE
        wait_until(v2.exists, timeout_s=120, what="checkpoint v2", interval_s=0.05, process=a)
        step_a = json.loads(v2.read_bytes())["step"]
        wait_until(
            lambda: audit_lines(tmp_path / "a.audit")[-1]["step"] > step_a + 3,
            timeout_s=60,
            what="steps past v2",
            interval_s=0.05,  # kill -9 before the next checkpoint
            process=a,
        )
    finally:
        a.send_signal(signal.SIGKILL)
        a.wait(30)
    checkpoint = manifest(snaps)
    trained_a = offsets_of(audit_lines(tmp_path / "a.audit"))
    assert sum(map(len, trained_a.values())) < sum(ends.values()), "A was not killed mid-stream"
    lost = {
        p: [o for o in offs if o > checkpoint["offsets"].get(str(p), -1)]
        for p, offs in trained_a.items()
    }
    assert any(lost.values()), "A consumed nothing after its checkpoint"

    # B: resumes exactly after the checkpoint; stopped by SIGTERM mid-stream (final snapshot).
    b = start_trainer(settings, tmp_path, "b")
    try:
        wait_until(
            lambda: len(audit_lines(tmp_path / "b.audit")) >= 20,
            timeout_s=120,
            what="B training",
            interval_s=0.05,
            process=b,
        )
        b.send_signal(signal.SIGTERM)
        assert b.wait(60) == 0
    finally:
        b.kill()
    lines_b = audit_lines(tmp_path / "b.audit")
    assert lines_b[0]["step"] == checkpoint["step"] + 1
    after_b = manifest(snaps)
    trained_b = offsets_of(lines_b)
    assert {int(p): o for p, o in after_b["offsets"].items()} == {
        p: max(offs) for p, offs in trained_b.items()
    } | {int(p): o for p, o in checkpoint["offsets"].items() if int(p) not in trained_b}
    assert sum(map(len, trained_b.values())) < sum(ends.values()) - sum(
        map(len, trained_a.values())
    )

    # C: finishes the stream from B's final snapshot, then stops when idle.
    c = start_trainer(settings, tmp_path, "c", "--idle-timeout-s", "4")
    assert c.wait(180) == 0
    trained_c = offsets_of(audit_lines(tmp_path / "c.audit"))
    final = manifest(snaps)

    for p, end in ends.items():
        kept_a = [o for o in trained_a.get(p, []) if o <= checkpoint["offsets"].get(str(p), -1)]
        assert kept_a == expected_range({}, p, len(kept_a))  # A: 0..checkpoint, each once
        assert trained_b.get(p, []) == expected_range(
            checkpoint["offsets"], p, max(trained_b.get(p, [-1])) + 1
        )
        assert trained_c.get(p, []) == expected_range(after_b["offsets"], p, end)
        assert Counter(kept_a + trained_b.get(p, []) + trained_c.get(p, [])) == Counter(range(end))
    assert final["offsets"] == {str(p): end - 1 for p, end in ends.items()}
    assert final["samples"] == total_rows  # every row trained exactly once in the checkpoint chain
    log_c = (tmp_path / "c.log").read_text()
    assert "stopped by idle" in log_c


# ---------------------------------------------------------------- data parallel


def torchrun(args: list[str], env: dict[str, str], log: Path, timeout: float) -> int:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    with open(log, "ab") as out:
        done = subprocess.run(
            [*cmd, *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout
        )
    return done.returncode


def test_two_ranks_split_the_partitions_and_train_every_sample_once(
    settings: Settings, tmp_path: Path
) -> None:
    per_partition = sample_messages(synthetic_events(users=60, seed=7), PARTITIONS)
    ends = produce(settings, per_partition)
    snaps = tmp_path / "snaps"
    args = [
        "-m",
        "ops.train_cli",
        *MODEL_ARGS,
        *CAPACITY_ARGS,
        "--snapshot-dir",
        str(snaps),
        "--audit-log",
        str(tmp_path / "dp.audit"),
        "--batch-size",
        "16",
        "--snapshot-every-steps",
        "20",
        "--idle-timeout-s",
        "4",
        "--max-wait-s",
        "0.2",
    ]
    log = tmp_path / "dp.log"
    rc = torchrun(args, trainer_env(settings), log, timeout=300)
    assert rc == 0, tail(log)

    by_rank = {r: offsets_of(audit_lines(Path(f"{tmp_path}/dp.audit.rank{r}"))) for r in (0, 1)}
    for rank, trained in by_rank.items():
        assert trained and all(p % 2 == rank for p in trained)  # p % world_size == rank
        for p, offs in trained.items():
            assert offs == list(range(ends[p])), (rank, p)  # each sample once, in order
    final = manifest(snaps)
    assert final["offsets"] == {str(p): end - 1 for p, end in ends.items()}  # gathered from both
    assert final["samples"] == rows_per_message(per_partition)
    assert final["metrics"]["ranks"] == 2.0 and final["metrics"]["auc"] > 0.5
    assert "ranks diverged" not in log.read_text()  # checked before every snapshot
    load_snapshot(latest_snapshot(snaps) or snaps)


SYNC_CHECK = textwrap.dedent(
    """
    import os, sys, torch, torch.distributed as dist
    import models
    from models.testing import random_batch
    from trainer.distributed import TorchComm
    from trainer.loop import Learner, LearnerConfig

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    cfg = models.ModelConfig(n_items=40, n_categories=6, dim=4, seq_len=8, topk=3)
    torch.manual_seed(0)
    learner = Learner(models.build_model(sys.argv[1], cfg), LearnerConfig(device="cpu"))
    model = learner.model.eval()  # BatchNorm on running statistics: a batch-split invariant loss
    full = random_batch(cfg, batch_size=12, n_clusters=4, seed=1, min_len=1)
    def grads(batch):
        model.zero_grad(set_to_none=True)
        learner.loss(batch).backward()
        named = model.named_parameters()
        return {n: p.grad.to_dense().clone() for n, p in named if p.grad is not None}
    expected = grads(full)
    lo, hi = (0, 4) if rank == 0 else (4, 12)  # unequal shares: gradients weighted by rows
    part = type(full)(**{k: (v[lo:hi] if v is not None else None) for k, v in vars(full).items()})
    grads(part)
    TorchComm(torch.device("cpu")).sync_gradients(model, hi - lo)
    got = {n: p.grad.to_dense() for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys(), sorted(set(got) ^ set(expected))
    for n in expected:
        assert torch.allclose(got[n], expected[n], atol=1e-6), n
    print(f"rank {rank}: {len(got)} gradients match", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # as ops.train_cli: gloo can abort in interpreter finalisation (torch 2.15)
    """
)


@pytest.mark.parametrize("model", ["dare", "din"])
def test_synchronised_gradients_equal_one_process_on_the_whole_batch(
    tmp_path: Path, model: str
) -> None:
    script = tmp_path / "sync_check.py"
    script.write_text(SYNC_CHECK)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    log = tmp_path / "sync.log"
    rc = torchrun([str(script), model], env, log, timeout=180)
    text = log.read_text()
    assert rc == 0, text[-3000:]
    assert text.count("gradients match") == 2
