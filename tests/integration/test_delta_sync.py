"""Delta sync on the real broker: a trainer publishing deltas every 0.3 s and a worker's watcher
following them (in place, without reloading whole snapshots) serve exactly the trainer's weights;
a worker that starts later from an old checkpoint replays the deltas after it and catches up.
"""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from contracts.settings import Settings
from feature_store import decode_samples
from models import ModelConfig
from serving.metrics import ScoringMetrics
from serving.reload import SnapshotWatcher
from serving.scorer import ModelHolder
from serving.snapshot import list_snapshots
from streaming.admin import ensure_topics
from tests.support.events import sample_messages, synthetic_events
from tests.support.snapshots import wait_for_version
from tests.support.waiting import wait_until
from trainer.config import TrainerConfig
from trainer.online import OnlineTrainer

pytestmark = [pytest.mark.integration]
CFG = ModelConfig(n_items=4096, n_categories=128, dim=8, seq_len=20, topk=5)


def keyed(settings: Settings, **extra: str) -> Settings:
    env = {
        "TWINSTREAM_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "TWINSTREAM_TOPIC_PREFIX": settings.topics.prefix,
        "TWINSTREAM_MODEL_HMAC_KEY": "k",
        "TWINSTREAM_DELTA_CHUNK_BYTES": "20000",  # several chunks per delta
    }
    return Settings.from_env(env | extra)


def watcher(settings: Settings, folder: Path) -> tuple[SnapshotWatcher, ModelHolder]:
    holder = ModelHolder()
    w = SnapshotWatcher(settings, holder, ScoringMetrics.create(CollectorRegistry()), folder)
    w.start()
    return w, holder


def counter(w: SnapshotWatcher, name: str) -> float:
    return w.metrics.registry.get_sample_value(name) or 0.0


def delta_trainer(tmp_path: Path, snapshot_every_s: float) -> TrainerConfig:
    """A trainer cutting deltas every 0.3 s and checkpoints every ``snapshot_every_s``."""
    return TrainerConfig(
        model_config=CFG,
        snapshot_dir=tmp_path / "trainer",
        batch_size=16,
        snapshot_every_steps=None,
        snapshot_every_s=snapshot_every_s,
        delta_every_s=0.3,
        max_wait_s=0.05,
        device="cpu",
        metrics_window=500,
    )


def test_workers_follow_the_trainer_by_deltas_and_catch_up_from_a_checkpoint(
    settings: Settings, tmp_path: Path
) -> None:
    settings = keyed(settings)
    per_partition = sample_messages(synthetic_events())
    ensure_topics(settings, {settings.topics.samples: 4, settings.topics.model_updates: 1})
    config = delta_trainer(tmp_path, snapshot_every_s=4.0)
    live, live_holder = watcher(settings, config.snapshot_dir)
    trainer = OnlineTrainer(settings, config)
    thread = threading.Thread(target=trainer.run, kwargs={"idle_timeout_s": 3.0})
    thread.start()
    send_in_waves(settings, trainer, thread, per_partition)  # training goes on for seconds
    thread.join(timeout=300)
    assert not thread.is_alive()
    final = trainer.version
    wait_for_version(live_holder, final, "live worker")
    live.stop()
    sent = trainer.delta_stats.sent
    assert len(sent) >= 5 and trainer.delta_stats.failed == 0
    assert live.follower.applied >= len(sent) - 2  # by deltas, not by reloading checkpoints
    assert counter(live, "twinstream_model_reloads_total") <= 2
    assert counter(live, "twinstream_model_reload_failures_total") == 0
    assert_same_model(trainer, live_holder)

    # a worker starting now with only the first checkpoint replays every delta after it
    late_folder = tmp_path / "late"
    first = list_snapshots(config.snapshot_dir)[0]
    shutil.copytree(first, late_folder / first.name)
    late, late_holder = watcher(settings, late_folder)
    wait_for_version(late_holder, final, "late worker")
    late.stop()
    assert late.follower.applied >= 3
    assert_same_model(trainer, late_holder)


def send_in_waves(
    settings: Settings,
    trainer: OnlineTrainer,
    thread: threading.Thread,
    per_partition: dict[int, list[bytes]],
    waves: int = 6,
    after_wave: Callable[[int], None] | None = None,
) -> None:
    """Send the samples in ``waves`` slices; after each, wait until the trainer has consumed it
    and then for over three delta periods. So every wave lands in a delta of its own however
    late the trainer joined or slowly it trains (a timed trickle raced both on a loaded CI host).
    ``after_wave(i)`` runs after wave ``i`` (from 0) has landed."""
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    for wave in range(waves):
        futures = {
            p: [
                producer.send(settings.topics.samples, b, partition=p)
                for b in slice_of(blobs, wave, waves)
            ]
            for p, blobs in per_partition.items()
        }
        producer.flush()
        last = {p: max(f.get(10).offset for f in fs) for p, fs in futures.items() if fs}
        wait_until(
            lambda last=last: consumed(trainer, thread, last),
            timeout_s=120,
            what=f"the trainer to consume wave {wave + 1} of {waves}",
        )
        threading.Event().wait(1.0)
        if after_wave is not None:
            after_wave(wave)
    producer.close()


def consumed(trainer: OnlineTrainer, thread: threading.Thread, last: dict[int, int]) -> bool:
    if not thread.is_alive():
        raise AssertionError("the trainer stopped before it consumed every sample sent")
    return all(dict(trainer.offsets).get(p, -1) >= o for p, o in last.items())


def slice_of(blobs: list[bytes], wave: int, waves: int) -> list[bytes]:
    return blobs[len(blobs) * wave // waves : len(blobs) * (wave + 1) // waves]


def test_a_restarted_trainer_chains_on_its_checkpoint_and_workers_keep_following(
    settings: Settings, tmp_path: Path
) -> None:
    """The second run resumes from the first run's final checkpoint, after which nothing was
    published: its deltas chain on it, and a worker serving it follows without a reload."""
    settings = keyed(settings)
    ensure_topics(settings, {settings.topics.samples: 4, settings.topics.model_updates: 1})
    everything = sample_messages(synthetic_events())
    halves = [{p: b[: len(b) // 2] for p, b in everything.items()}]
    halves.append({p: b[len(b) // 2 :] for p, b in everything.items()})
    config = delta_trainer(tmp_path, snapshot_every_s=600.0)
    live, holder = watcher(settings, config.snapshot_dir)
    versions = []
    for half in halves:
        trainer = OnlineTrainer(settings, config)
        thread = threading.Thread(target=trainer.run, kwargs={"idle_timeout_s": 3.0})
        thread.start()
        send_in_waves(settings, trainer, thread, half)
        thread.join(timeout=300)
        versions.append((trainer.resumed_from, trainer.version, len(trainer.delta_stats.sent)))
        final = trainer.version
        wait_for_version(holder, final, "worker")
    live.stop()
    (first_from, first_end, _), (second_from, _, second_deltas) = versions
    assert first_from == 0 and second_from == first_end  # the chain went on from its checkpoint
    assert second_deltas >= 3
    assert counter(live, "twinstream_model_reloads_total") == 1  # the first chain's checkpoint
    assert counter(live, "twinstream_model_reload_failures_total") == 0
    assert_same_model(trainer, holder)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_worker_on_another_host_fetches_checkpoints_over_http_and_follows_deltas(
    settings: Settings, tmp_path: Path
) -> None:
    """No shared folder: the workers' folders are never written by the trainer; they fetch its
    checkpoints from its HTTP server (verified against its HMAC and sha256) and apply deltas."""
    port = free_port()
    trainer_settings = keyed(settings, TWINSTREAM_CHECKPOINT_HTTP_PORT=str(port))
    worker_settings = keyed(settings, TWINSTREAM_CHECKPOINT_URL=f"http://127.0.0.1:{port}")
    ensure_topics(settings, {settings.topics.samples: 4, settings.topics.model_updates: 1})
    config = TrainerConfig(
        model_config=CFG,
        snapshot_dir=tmp_path / "trainer",
        batch_size=16,
        snapshot_every_steps=None,
        snapshot_every_s=3.0,
        delta_every_s=0.3,
        max_wait_s=0.05,
        device="cpu",
        metrics_window=500,
    )
    remote, remote_holder = watcher(worker_settings, tmp_path / "worker")
    trainer = OnlineTrainer(trainer_settings, config)
    # no idle timeout: no samples reach it while the late worker fetches its checkpoint, however
    # long that takes on a loaded host; stopped once every wave has landed
    thread = threading.Thread(target=trainer.run)
    thread.start()
    # a second worker, started halfway with an empty folder of its own: it fetches the latest
    # checkpoint, and the later waves reach it as deltas (started after the last wave, the
    # trainer's final checkpoint could be all it ever saw on a slow host)
    started: list[tuple[SnapshotWatcher, ModelHolder]] = []

    def start_late(wave: int) -> None:
        if wave == 2:
            started.append(watcher(worker_settings, tmp_path / "late-worker"))
            wait_until(
                lambda: started[0][1].model is not None,
                timeout_s=60,
                what="the late worker's first checkpoint",
            )

    blobs = sample_messages(synthetic_events())
    send_in_waves(settings, trainer, thread, blobs, after_wave=start_late)
    ((late, late_holder),) = started
    trainer.stop()
    thread.join(timeout=300)
    assert not thread.is_alive()
    final = trainer.version
    for holder, name in ((remote_holder, "remote"), (late_holder, "late")):
        wait_for_version(holder, final, f"{name} worker")
    remote.stop()
    late.stop()
    assert remote.follower.applied >= 3 and late.follower.applied >= 1
    assert_same_model(trainer, remote_holder)
    assert_same_model(trainer, late_holder)
    assert list_snapshots(tmp_path / "worker")  # its own copies, fetched over HTTP
    assert counter(remote, "twinstream_model_reload_failures_total") == 0


def assert_same_model(trainer: OnlineTrainer, holder: ModelHolder) -> None:
    served = holder.model
    assert served is not None
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(served.model.state_dict()[name], tensor), name
    blobs = sample_messages(synthetic_events())[0][:40]
    arrays = decode_samples(blobs, CFG.seq_len)
    expected = trainer.learner.predict(trainer.mapper.to_batch(arrays, learn=False))
    assert torch.equal(served.score(arrays).logits, expected.logits)  # type: ignore[attr-defined]
