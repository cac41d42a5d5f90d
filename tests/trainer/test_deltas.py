"""Deltas without Kafka: a snapshot plus the deltas cut after it (chunked, signed, reassembled,
applied in place) scores exactly like the trainer; the id-map changes cover new ids; a delta that
does not fit, is altered or unsigned is refused before anything changes."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from contracts.settings import Settings
from contracts.topics import TopicNames
from feature_store import decode_samples
from models import ModelConfig
from serving.delta import (
    Delta,
    DeltaAssembler,
    DeltaHeader,
    apply_prepared,
    chunk_messages,
    prepare,
)
from serving.delta_follow import DeltaFollower
from serving.loading import LoadedSnapshot, load_snapshot
from serving.manifest import SnapshotError
from serving.metrics import ScoringMetrics
from serving.scorer import ModelHolder
from serving.signing import Signer
from tests.support.events import sample_messages, synthetic_events
from trainer.config import TrainerConfig
from trainer.deltas import cut_delta, idmap_change
from trainer.online import OnlineTrainer

SETTINGS = Settings(topics=TopicNames(prefix="unit-"))
CFG = ModelConfig(n_items=2048, n_categories=64, dim=8, seq_len=20, topk=5)
SIGNER = Signer.of("k")
BLOBS = [b for _, part in sorted(sample_messages(synthetic_events()).items()) for b in part]
CHUNKS = [decode_samples(BLOBS[i : i + 64], CFG.seq_len) for i in range(0, len(BLOBS), 64)]


def as_delta(cut, before) -> Delta:  # type: ignore[no-untyped-def]
    changes = {n: idmap_change(before[n], cut.idmaps[n]) for n in cut.idmaps}
    return Delta(cut.header, cut.rows, cut.dense, changes)


def wire(delta: Delta, chunk_bytes: int = 4096) -> Delta:
    """Through the wire format: chunks, each signed, reassembled and verified."""
    assembler = DeltaAssembler(SIGNER, max_bytes=1 << 24)
    out = None
    for value, headers in chunk_messages(delta, SIGNER, chunk_bytes):
        out = assembler.add(value, dict(headers)["mac"].decode())
    assert out is not None
    return out


def trained_chain(tmp_path: Path, n: int = 5) -> tuple[OnlineTrainer, LoadedSnapshot, list[Delta]]:
    """A trainer, the snapshot it wrote, and ``n`` deltas it cut after it (through the wire)."""
    config = TrainerConfig(
        model_config=CFG, snapshot_dir=tmp_path, device="cpu", delta_every_s=1.0, metrics_window=500
    )
    trainer = OnlineTrainer(SETTINGS, config)
    trainer.learn_arrays(CHUNKS[0])
    written = trainer.snapshot()
    assert written is not None and trainer.touched is not None
    trainer.touched.take()
    maps = {
        "item": trainer.mapper.items.assigned(),
        "category": trainer.mapper.categories.assigned(),
    }
    version, deltas = written.manifest.version, []
    for arrays in CHUNKS[1 : n + 1]:
        trainer.learn_arrays(arrays)
        version += 1
        header = DeltaHeader(version, version - 1, 1, 0.0, "dare")
        cut = cut_delta(trainer.model, trainer.mapper, trainer.touched, header)
        deltas.append(wire(as_delta(cut, maps)))
        maps = cut.idmaps
    return trainer, load_snapshot(written.path), deltas


def assert_serves_like(trainer: OnlineTrainer, served: LoadedSnapshot) -> None:
    for arrays in CHUNKS[6:9]:  # ids of every kind, known and unknown
        expected = trainer.learner.predict(trainer.mapper.to_batch(arrays, learn=False))
        assert torch.equal(served.score(arrays).logits, expected.logits)
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(served.model.state_dict()[name], tensor), name


def test_a_snapshot_plus_deltas_scores_exactly_like_the_trainer(tmp_path: Path) -> None:
    trainer, served, deltas = trained_chain(tmp_path)
    for delta in deltas:
        apply_prepared(served, prepare(served, delta))
    assert served.version == deltas[-1].header.version
    assert sum(len(c) for d in deltas for c in d.idmaps.values()) > 0  # new ids came with them
    assert_serves_like(trainer, served)


@pytest.mark.parametrize(
    ("twin", "gil_share"),
    [(True, 1.0), (True, 0.3), (False, 1.0)],
    ids=["twin", "twin-gil-limited", "in-place"],
)
def test_a_follower_serves_the_trainers_weights_with_or_without_a_twin(
    tmp_path: Path, twin: bool, gil_share: float
) -> None:
    """With a twin the holder's model is swapped for the copy a delta was written into, and the
    retired copy catches up: both equal the trainer's after every delta. The deltas arrive as
    their signed chunks, as on ``model-updates``."""
    trainer, served, deltas = trained_chain(tmp_path)
    holder = ModelHolder()
    holder.swap(served)
    follower = DeltaFollower(
        holder, ScoringMetrics.create(CollectorRegistry()), SIGNER, 1 << 24, _refused,
        twin=twin, gil_share=gil_share,
    )  # fmt: skip
    for delta in reversed(deltas):  # early ones wait for their predecessor
        for value, headers in chunk_messages(delta, SIGNER, 4096):
            follower.chunk(value, dict(headers).get("mac"))
    assert follower.applied == len(deltas) and holder.model is not None
    assert holder.model.version == deltas[-1].header.version
    assert_serves_like(trainer, cast(LoadedSnapshot, holder.model))
    if twin:
        other = follower.twin_of(holder.model)
        assert other is not holder.model and other is not None
        assert_serves_like(trainer, cast(LoadedSnapshot, other))
    else:
        assert holder.model is served


def _refused(reason: str, what: object, detail: object) -> None:
    raise AssertionError(f"refused {what} ({reason}): {detail}")


def test_a_delta_that_does_not_fit_changes_nothing(tmp_path: Path) -> None:
    config = TrainerConfig(model_config=CFG, snapshot_dir=tmp_path, device="cpu")
    written = OnlineTrainer(SETTINGS, config).snapshot()
    assert written is not None
    served = load_snapshot(written.path)
    before = {k: v.clone() for k, v in served.model.state_dict().items()}
    table = next(k for k in before if k.endswith("item.embedding.weight"))
    header = DeltaHeader(2, 1, 1, 0.0, "dare")
    outside = Delta(header, {table: (torch.tensor([1, CFG.n_items]), torch.ones(2, 8))}, {}, {})
    wrong = Delta(header, {table: (torch.tensor([1]), torch.ones(1, 9))}, {}, {})
    unknown = Delta(header, {}, {"nope": torch.ones(1)}, {})
    for delta in (outside, wrong, unknown):
        with pytest.raises(SnapshotError) as err:
            prepare(served, wire(delta))
        assert err.value.reason == "config"
    assert all(torch.equal(before[k], v) for k, v in served.model.state_dict().items())
    assert served.version == 1


def test_altered_unsigned_or_oversized_chunks_are_refused() -> None:
    delta = Delta(DeltaHeader(2, 1, 1, 0.0, "dare"), {}, {"w": torch.ones(3000)}, {})
    (value, headers), *_ = chunk_messages(delta, SIGNER, 1 << 20)
    mac = dict(headers)["mac"].decode()
    reasons = []
    for v, m, bound in (
        (value[:-1] + bytes([value[-1] ^ 1]), mac, 1 << 20),  # altered
        (value, None, 1 << 20),  # unsigned
        (value, Signer.of("other").sign("delta", value), 1 << 20),  # another key
        (value, mac, 100),  # larger than the worker allows
    ):
        with pytest.raises(SnapshotError) as err:
            DeltaAssembler(SIGNER, max_bytes=bound).add(v, m)
        reasons.append(err.value.reason)
    assert reasons == ["signature", "signature", "signature", "unsafe"]
    unsigned = DeltaAssembler(Signer.of(None), max_bytes=1 << 20)
    (plain, _), *_ = chunk_messages(delta, Signer.of(None), 1 << 20)
    broken = plain[:-1] + bytes([plain[-1] ^ 1])
    with pytest.raises(SnapshotError) as err:
        unsigned.add(broken, None)
    assert err.value.reason == "checksum"  # without a key the sha256 still catches damage
    assert np.array_equal(
        unsigned.add(plain, None).dense["w"].numpy(),
        np.ones(3000, np.float32),  # type: ignore[union-attr]
    )


def test_deltas_during_the_twin_copy_are_written_in_place_then_replayed_into_it(
    tmp_path: Path,
) -> None:
    """After a checkpoint load the twin is copied on its own thread. Deltas meanwhile go in
    place and are written into the copy once it is done: a copy taken before any of them (the
    worst a copy racing the writes can be) still ends up equal to the trainer's weights."""
    trainer, served, deltas = trained_chain(tmp_path, n=6)  # 3 in place, 3 through the twin
    holder = ModelHolder()
    holder.swap(served)
    follower = DeltaFollower(
        holder, ScoringMetrics.create(CollectorRegistry()), SIGNER, 1 << 24, _refused, twin=True
    )
    copied, release = threading.Event(), threading.Event()
    copy_of = follower.twins.copy_of

    def slow_copy(model: object) -> object:
        twin = copy_of(model)  # the weights before any delta ...
        copied.set()
        release.wait(30)  # ... handed over only after three were written in place
        return twin

    follower.twins.copy_of = slow_copy  # type: ignore[method-assign]
    follower.twins.start(served)
    assert copied.wait(30)

    def feed(delta: Delta) -> None:
        for value, headers in chunk_messages(delta, SIGNER, 4096):
            follower.chunk(value, dict(headers).get("mac"))

    for delta in deltas[:3]:
        feed(delta)
    assert follower.applied == 3 and holder.model is served  # in place: no twin yet
    release.set()
    follower.twin_of(served)  # waits for the copy, replays the three into it
    for delta in deltas[3:]:
        feed(delta)
    assert holder.model is not served  # the twin serves now
    assert_serves_like(trainer, cast(LoadedSnapshot, holder.model))
    assert_serves_like(trainer, cast(LoadedSnapshot, follower.twin_of(holder.model)))
