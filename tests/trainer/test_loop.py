"""The shared training step: optimizer split, learning, progressive validation, devices."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import models
from models.testing import random_batch
from trainer.loop import Learner, LearnerConfig, resolve_device
from trainer.optim import LazyAdam

CFG = models.ModelConfig(n_items=200, n_categories=10, dim=8, seq_len=12, topk=4, mlp=(16, 8))


def learner(name: str = "dare", seed: int = 0) -> Learner:
    torch.manual_seed(seed)
    return Learner(models.build_model(name, CFG), LearnerConfig(device="cpu"))


def toy_batch(seed: int = 0, n: int = 128) -> models.Batch:
    """Clicks on items whose row is even: learnable from the target embedding alone."""
    batch = random_batch(CFG, batch_size=n, seed=seed, min_len=3)
    return replace(batch, label=(batch.target_item % 2 == 0).float())


def test_sparse_tables_use_sparse_adam_and_dense_weights_adam_with_l2() -> None:
    lrn = learner()
    sparse, dense = lrn.optimizers
    assert isinstance(sparse, LazyAdam) and isinstance(dense, torch.optim.Adam)
    assert {id(p) for g in sparse.param_groups for p in g["params"]} == {
        id(p) for p in lrn.model.sparse_parameters()
    }
    decayed, plain = dense.param_groups
    assert decayed["weight_decay"] == 1e-6 and all(p.ndim >= 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.ndim < 2 for p in plain["params"])
    assert decayed["lr"] == 0.01


@pytest.mark.parametrize("name", ["bst", "dsin", "dien"])
def test_a_sequence_encoder_gets_its_own_adam_at_encoder_lr(name: str) -> None:
    torch.manual_seed(0)
    lrn = Learner(models.build_model(name, CFG), LearnerConfig(device="cpu", encoder_lr=3e-4))
    sparse, dense, encoder = lrn.optimizers
    params = {opt: [p for g in opt.param_groups for p in g["params"]] for opt in lrn.optimizers}
    assert {id(p) for p in params[encoder]} == {id(p) for p in lrn.model.encoder_parameters()}
    assert all(g["lr"] == 3e-4 for g in encoder.param_groups)
    assert all(g["lr"] == 0.01 for g in [*dense.param_groups, *sparse.param_groups])
    every = [id(p) for opt in lrn.optimizers for p in params[opt]]
    assert sorted(every) == sorted(id(p) for p in lrn.model.parameters())  # each exactly once


@pytest.mark.parametrize("name", ["mean", "din", "twin", "twin_v2", "dare"])
def test_models_without_a_sequence_encoder_keep_two_optimizers(name: str) -> None:
    lrn = Learner(models.build_model(name, CFG), LearnerConfig(device="cpu"))
    assert lrn.model.encoder_parameters() == [] and len(lrn.optimizers) == 2


def test_torch_sparse_adam_can_be_chosen() -> None:
    model = models.build_model("mean", CFG)
    lrn = Learner(model, LearnerConfig(device="cpu", sparse_optimizer="sparse_adam"))
    assert isinstance(lrn.optimizers[0], torch.optim.SparseAdam)


def test_dense_embedding_models_get_one_adam() -> None:
    model = models.build_model("mean", replace(CFG, sparse_embeddings=False))
    lrn = Learner(model, LearnerConfig(device="cpu"))
    assert len(lrn.optimizers) == 1 and isinstance(lrn.optimizers[0], torch.optim.Adam)


@pytest.mark.parametrize("name", ["mean", "dare", "dien"])
def test_loss_decreases_on_a_toy_task(name: str) -> None:
    lrn = learner(name)
    batch = toy_batch()
    losses = [lrn.learn_many(batch) for _ in range(40)]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert lrn.steps == 40


def test_lazy_updates_touch_only_rows_in_the_batch() -> None:
    lrn = learner("mean")
    batch = toy_batch()
    table = lrn.model.item.weight
    before = table.detach().clone()
    lrn.learn_many(batch)
    used = torch.unique(torch.cat([batch.target_item, batch.hist_item.flatten()]))
    untouched = torch.ones(table.shape[0], dtype=torch.bool)
    untouched[used] = False
    assert torch.equal(table.detach()[untouched], before[untouched])
    assert not torch.equal(table.detach()[used[used > 0]], before[used[used > 0]])


def test_score_then_learn_returns_the_predictions_made_before_learning() -> None:
    a, b = learner(seed=1), learner(seed=1)
    batch = toy_batch(seed=2)
    expected = a.predict_proba_many(batch)
    got = b.score_then_learn(batch)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert not np.allclose(b.predict_proba_many(batch), expected)  # it did learn
    assert got.shape == (batch.size,) and ((got > 0) & (got < 1)).all()


def test_learning_needs_labels() -> None:
    with pytest.raises(ValueError, match="labels"):
        learner().learn_many(replace(toy_batch(), label=None))


def test_device_defaults_to_cuda_when_available_and_can_be_overridden() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected
    assert resolve_device("cpu").type == "cpu"
    assert next(learner().model.parameters()).device.type == "cpu"


def test_state_copy_round_trip() -> None:
    lrn = learner()
    batch = toy_batch()
    state = lrn.state_copy()
    before = lrn.predict_proba_many(batch)
    lrn.learn_many(batch)
    lrn.load_state(state)
    np.testing.assert_allclose(lrn.predict_proba_many(batch), before, rtol=1e-6)
