"""Only the trainer's weights are served: with a key set, a worker's snapshot watcher (real, on
the real broker) is sent each kind of forgery, then one genuine snapshot. None of the forgeries is
served or applied, each is refused with its reason, none stalls the watcher, and the genuine one
is served.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from contracts.settings import Settings
from serving.delta import Delta, DeltaHeader, chunk_messages
from serving.manifest import MAC_FILE, MANIFEST_FILE, MODEL_FILE, sha256_hex
from serving.metrics import ScoringMetrics
from serving.reload import SnapshotWatcher
from serving.scorer import ModelHolder
from serving.signing import Signer
from serving.snapshot import WrittenSnapshot, version_dir
from streaming.admin import ensure_topics
from tests.support.snapshots import write_scoring_snapshot
from tests.support.waiting import wait_until
from trainer.announce import announce

KEY = "the-trainer's-key"
ITEMS, CATS = np.arange(1, 200), np.arange(1, 200) % 7


def _forge_weights(written: WrittenSnapshot) -> None:
    """Other weights, the manifest's sha256 updated to match (only the MAC can tell)."""
    weights = written.path / MODEL_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    manifest = json.loads((written.path / MANIFEST_FILE).read_bytes())
    manifest["files"][MODEL_FILE] = sha256_hex(bytes(data))
    (written.path / MANIFEST_FILE).write_bytes(json.dumps(manifest).encode())


def test_no_forgery_is_served_and_none_blocks_the_genuine_snapshot(
    settings: Settings, tmp_path: Path
) -> None:
    settings = Settings.from_env(
        {
            "TWINSTREAM_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "TWINSTREAM_TOPIC_PREFIX": settings.topics.prefix,
            "TWINSTREAM_MODEL_HMAC_KEY": KEY,
            "TWINSTREAM_MODEL_READ_TIMEOUT_S": "20",
        }
    )
    ensure_topics(settings, {settings.topics.model_updates: 1})
    trainer, forger = Signer.of(KEY), Signer.of("a guessed key")
    snaps, elsewhere = tmp_path / "snaps", tmp_path / "elsewhere"
    write_scoring_snapshot(snaps, 1, ITEMS, CATS, trainer)
    holder, metrics = ModelHolder(), ScoringMetrics.create(CollectorRegistry())
    watcher = SnapshotWatcher(settings, holder, metrics, snaps)
    watcher.start()
    wait_until(lambda: holder.model, timeout_s=60, what="the first genuine snapshot")
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    topic = settings.topics.model_updates

    def refused(reason: str | None = None) -> float:
        samples = metrics.registry.collect()
        return sum(
            s.value
            for family in samples
            for s in family.samples
            if s.name == "twinstream_model_reload_failures_total"
            and (reason is None or s.labels["reason"] == reason)
        )

    def send(written: WrittenSnapshot, signer: Signer | None) -> None:
        """Announce and wait until the watcher has refused it (one at a time: every forgery
        is tried, none hidden behind a later announcement)."""
        before = refused()
        announce(producer, topic, written, signer)
        wait_until(
            lambda: refused() > before or None, timeout_s=30, what=f"v{written.manifest.version}"
        )

    # 1. unsigned: a snapshot and announcement by someone without the key
    send(write_scoring_snapshot(snaps, 2, ITEMS, CATS), None)
    # 2. signed with another key, a huge version (must not block later versions)
    huge = write_scoring_snapshot(tmp_path / "huge", 10**9, ITEMS, CATS, forger)
    send(huge, forger)
    # 3. the trainer's snapshot, weights altered and the manifest's sha256 updated (the
    #    announced manifest sha256 tells; without an announcement the manifest's MAC would)
    altered = write_scoring_snapshot(snaps, 3, ITEMS, CATS, trainer)
    _forge_weights(altered)
    send(altered, trainer)
    # 4. the trainer's snapshot, weights altered, the manifest left as it was
    flipped = write_scoring_snapshot(snaps, 4, ITEMS, CATS, trainer)
    (flipped.path / MODEL_FILE).write_bytes(b"\0" * 64)
    send(flipped, trainer)
    # 5. a version folder that is a symlink to a genuine snapshot outside the folder
    outside = write_scoring_snapshot(elsewhere, 5, ITEMS, CATS, trainer)
    version_dir(snaps, 5).symlink_to(outside.path)
    send(outside, trainer)
    # 6. the weights a symlink to /dev/zero (a read of it never ends)
    zero = write_scoring_snapshot(snaps, 6, ITEMS, CATS, trainer)
    (zero.path / MODEL_FILE).unlink()
    (zero.path / MODEL_FILE).symlink_to("/dev/zero")
    send(zero, trainer)
    # 7. the weights a FIFO (a read of it waits for a writer)
    fifo = write_scoring_snapshot(snaps, 7, ITEMS, CATS, trainer)
    (fifo.path / MODEL_FILE).unlink()
    os.mkfifo(fifo.path / MODEL_FILE)
    send(fifo, trainer)
    # 8. the manifest's MAC of another snapshot (a replayed signature)
    replayed = write_scoring_snapshot(snaps, 8, ITEMS, CATS)
    shutil.copy(version_dir(snaps, 1) / MAC_FILE, replayed.path / MAC_FILE)
    send(replayed, trainer)
    # 9. deltas on v1: unsigned, and signed with another key (chunked like the trainer's)
    state = holder.model.model.state_dict()  # type: ignore[union-attr]
    table = next(k for k in state if k.endswith("item.embedding.weight"))
    forged = Delta(
        DeltaHeader(2, 1, 1, 0.0, "dare"), {table: (torch.tensor([1]), torch.ones(1, 8))}, {}, {}
    )
    for signer in (Signer.of(None), forger):
        before = refused()
        for value, headers in chunk_messages(forged, signer, 1 << 20):
            producer.send(topic, value=value, headers=headers).get(30)
        wait_until(lambda b=before: refused() > b or None, timeout_s=30, what="a forged delta")
    assert holder.model is not None and holder.model.version == 1
    # and then the genuine one
    announce(producer, topic, write_scoring_snapshot(snaps, 9, ITEMS, CATS, trainer), trainer)

    served = wait_until(
        lambda: holder.model if holder.model and holder.model.version == 9 else None,
        timeout_s=60,
        what="the genuine v9 after eight forgeries",
    )
    producer.close()
    watcher.stop()
    assert served.version == 9
    assert not watcher._thread.is_alive()  # stopped: it was never stuck in a read

    assert metrics.registry.get_sample_value("twinstream_model_reloads_total") == 2  # v1, v9
    assert refused("signature") == 5  # unsigned, another key, a replayed MAC, 2 forged deltas
    assert refused("checksum") == 2  # an altered manifest, altered weights
    assert refused("unsafe") == 3  # symlinked folder, /dev/zero symlink, FIFO
    assert refused() == 10

    # a worker starting on this folder skips every forged folder and serves the newest genuine
    restarted = ModelHolder()
    again = SnapshotWatcher(settings, restarted, ScoringMetrics.create(CollectorRegistry()), snaps)
    again._load_latest(snaps)
    assert restarted.model is not None and restarted.model.version == 9
    version_dir(snaps, 9).rename(tmp_path / "gone")
    again._load_latest(snaps)  # v8..v2 forged: v1 is the newest genuine one left
    fresh = ModelHolder()
    SnapshotWatcher(
        settings, fresh, ScoringMetrics.create(CollectorRegistry()), snaps
    )._load_latest(snaps)
    assert fresh.model is not None and fresh.model.version == 1
