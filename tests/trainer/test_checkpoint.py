"""Checkpoints written from live memory while training goes on: the files hold exactly the
state at the cut (weights, id maps, optimizer moments), whatever the steps taken meanwhile
changed, and the trainer resumes from them exactly."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from contracts.settings import Settings
from contracts.topics import TopicNames
from feature_store import decode_samples
from models import ModelConfig
from serving.loading import load_snapshot
from serving.signing import Signer
from serving.snapshot import load_optimizer_state
from tests.support.events import sample_messages, synthetic_events
from trainer import checkpoint
from trainer.checkpoint import RowCopyOnWrite, start_checkpoint
from trainer.config import TrainerConfig
from trainer.online import OnlineTrainer

SETTINGS = Settings(topics=TopicNames(prefix="unit-"))
CFG = ModelConfig(n_items=2048, n_categories=64, dim=8, seq_len=20, topk=5)


def by_param(optimizers: list[torch.optim.Optimizer]) -> dict[tuple[int, int], dict]:
    """Each optimizer's state by (optimizer, parameter position)."""
    out = {}
    for i, opt in enumerate(optimizers):
        params = [p for group in opt.param_groups for p in group["params"]]
        for j, p in enumerate(params):
            if p in opt.state:
                out[(i, j)] = opt.state[p]
    return out


def test_a_checkpoint_written_while_training_holds_the_state_at_its_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoint, "CHUNK_BYTES", 2048)  # 64 rows a chunk: many chunks
    slow = RowCopyOnWrite.chunks

    def slowly(self: RowCopyOnWrite, live: object) -> Iterator[torch.Tensor]:
        for chunk in slow(self, live):  # type: ignore[arg-type]
            time.sleep(0.01)  # the steps below run while the tables are written
            yield chunk

    monkeypatch.setattr(RowCopyOnWrite, "chunks", slowly)
    blobs = [b for p, part in sorted(sample_messages(synthetic_events()).items()) for b in part]
    batches = [decode_samples(blobs[i : i + 64], CFG.seq_len) for i in range(0, len(blobs), 64)]
    config = TrainerConfig(model_config=CFG, snapshot_dir=tmp_path, device="cpu", delta_every_s=1)
    trainer = OnlineTrainer(SETTINGS, config)
    for arrays in batches[:5]:
        trainer.learn_arrays(arrays)
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    moments = {
        key: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
        for key, state in by_param(trainer.learner.optimizers).items()
    }
    idmaps = {k: v.clone() for k, v in trainer.mapper.state_dict().items()}
    content = trainer._content(dict(trainer.offsets), {}, trainer.attention.counts())
    run = start_checkpoint(tmp_path, 7, content, Signer.of("k"), trainer.learner.optimizers)
    trainer.learner.on_rows = lambda table, rows: run.cow.before_change(table, rows)
    for arrays in batches[5:12]:  # new ids, reset rows, optimizer steps: all during the write
        trainer.learn_arrays(arrays)
    assert not run.done()  # the steps really ran while it was written
    run.wait()
    assert run.error is None and run.written is not None
    assert sum(live.saved_rows for live in run.cow.tracked()) > 0

    loaded = load_snapshot(run.written.path, signer=Signer.of("k"))
    for name, tensor in weights.items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    assert all(torch.equal(loaded.mapper.state_dict()[k], v) for k, v in idmaps.items())
    fresh = OnlineTrainer(SETTINGS, TrainerConfig(model_config=CFG, snapshot_dir=tmp_path / "x"))
    blob = loaded.optimizer_bytes()
    assert blob is not None
    fresh.learner.model.load_state_dict(loaded.model.state_dict())
    load_optimizer_state(blob, fresh.learner.optimizers)
    restored = by_param(fresh.learner.optimizers)
    assert restored.keys() == moments.keys()
    for where, want in moments.items():
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(restored[where][key], value), (where, key)
            else:
                assert restored[where][key] == value, (where, key)
