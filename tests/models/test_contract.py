"""One contract every model in the zoo passes (river's ``checks`` style), parametrised by name."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from models import MODEL_NAMES, Batch, CTRModel, ModelConfig, ModelOutput, build_model
from models.testing import pad_left, random_batch, share_history

TWO_STAGE = {"twin", "twin_v2", "dare"}


def build(name: str, config: ModelConfig, seed: int = 0) -> CTRModel:
    torch.manual_seed(seed)
    return build_model(name, config)


def loss_of(out: ModelOutput, batch: Batch) -> torch.Tensor:
    assert batch.label is not None
    loss = F.binary_cross_entropy_with_logits(out.logits, batch.label)
    return loss if out.aux_loss is None else loss + out.aux_loss


def optimizers(model: CTRModel) -> list[torch.optim.Optimizer]:
    opts: list[torch.optim.Optimizer] = [torch.optim.Adam(model.dense_parameters(), lr=0.01)]
    if model.sparse_parameters():
        opts.append(torch.optim.SparseAdam(model.sparse_parameters(), lr=0.01))
    return opts


def train_step(model: CTRModel, batch: Batch) -> torch.Tensor:
    model.train()
    opts = optimizers(model)
    loss = loss_of(model(batch), batch)
    loss.backward()
    for opt in opts:
        opt.step()
    return loss.detach()


def sequence_mask(model: CTRModel, batch: Batch) -> torch.Tensor:
    return batch.cluster_mask if model.attends == "cluster" else batch.hist_mask


def grad_size(p: torch.Tensor) -> float:
    g = p.grad
    if g is None:
        return 0.0
    return float(g.coalesce().values().abs().sum() if g.is_sparse else g.abs().sum())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_shapes_types_and_masking(name: str, config: ModelConfig) -> None:
    batch = random_batch(config, batch_size=16, n_clusters=9, seed=1)
    model = build(name, config).eval()
    out = model(batch)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (16,) and out.logits.dtype == torch.float32
    assert torch.isfinite(out.logits).all()
    assert out.aux_loss is None  # eval mode
    mask = sequence_mask(model, batch)
    if model.attends is None:
        assert out.attention is None
    else:
        assert out.attention is not None and out.attention.shape == mask.shape
        assert torch.isfinite(out.attention).all()
        assert (out.attention[~mask] == 0).all(), "padding must get no attention"
    if name in TWO_STAGE:
        assert out.attended_index is not None
        assert out.attended_index.shape == (16, min(config.topk, mask.shape[1]))
        assert out.attended_index.dtype == torch.int64
        idx = out.attended_index
        assert ((idx == -1) | mask.gather(1, idx.clamp(min=0))).all()
        assert ((idx >= 0).sum(1) == mask.sum(1).clamp(max=config.topk)).all()
    else:
        assert out.attended_index is None


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_training_step_reaches_every_parameter(name: str, config: ModelConfig) -> None:
    batch = random_batch(config, batch_size=16, n_clusters=9, seed=2, min_len=4)
    model = build(name, config).train()
    out = model(batch)
    assert (out.aux_loss is not None) == (name == "dien")
    loss_of(out, batch).backward()
    dead = [n for n, p in model.named_parameters() if grad_size(p) == 0.0]
    assert not dead, f"parameters without gradient: {dead}"
    for p in model.sparse_parameters():
        assert p.grad is not None and p.grad.is_sparse


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_training_changes_predictions(name: str, config: ModelConfig) -> None:
    batch = random_batch(config, batch_size=16, n_clusters=9, seed=3, min_len=1)
    model = build(name, config)
    before = model.eval()(batch).logits.detach()
    train_step(model, batch)
    after = model.eval()(batch).logits.detach()
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_left_padding_changes_nothing(name: str, config: ModelConfig) -> None:
    batch = random_batch(config, batch_size=16, n_clusters=9, seed=4)
    model = build(name, config)
    train_step(model, batch)  # non-trivial BatchNorm statistics
    model.eval()
    with torch.no_grad():
        out, padded = model(batch), model(pad_left(batch, 5))
    torch.testing.assert_close(padded.logits, out.logits, atol=1e-5, rtol=1e-5)
    if out.attention is not None:
        assert padded.attention is not None
        torch.testing.assert_close(padded.attention[:, 5:], out.attention, atol=1e-6, rtol=1e-5)
        assert (padded.attention[:, :5] == 0).all()
    if out.attended_index is not None:
        assert padded.attended_index is not None
        kept = padded.attended_index[:, : out.attended_index.shape[1]]
        shifted = torch.where(kept >= 0, kept - 5, kept)
        # same positions up to the order of tied scores
        assert torch.equal(shifted.sort(1).values, out.attended_index.sort(1).values)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("training", [True, False])
def test_empty_history(name: str, training: bool, config: ModelConfig) -> None:
    batch = random_batch(config, batch_size=6, n_clusters=5, seed=5, max_len=0)
    assert not batch.hist_mask.any() and not batch.cluster_mask.any()
    model = build(name, config).train(training)
    out = model(batch)
    assert torch.isfinite(out.logits).all()
    if out.attention is not None:
        assert (out.attention == 0).all()
    if out.attended_index is not None:
        assert (out.attended_index == -1).all()
    if training:
        loss_of(out, batch).backward()
        assert all(
            torch.isfinite(p.grad.coalesce().values() if p.grad.is_sparse else p.grad).all()
            for p in model.parameters()
            if p.grad is not None
        )


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_mixed_lengths_match_rows_alone(name: str, config: ModelConfig) -> None:
    """A row's prediction does not depend on the other rows (eval mode), short or empty."""
    batch = random_batch(config, batch_size=8, n_clusters=9, seed=6)
    model = build(name, config).eval()
    together = model(batch).logits
    alone = torch.cat([model(take_rows(batch, [i])).logits for i in range(8)])
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=1e-5)


def take_rows(batch: Batch, rows: list[int]) -> Batch:
    return replace(
        batch,
        **{
            f.name: getattr(batch, f.name)[rows]
            for f in fields(batch)
            if isinstance(getattr(batch, f.name), torch.Tensor)
        },
    )


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_shared_history_view_matches_copied_history(name: str, config: ModelConfig) -> None:
    """Scoring many candidates against one broadcast history: same numbers as copying it."""
    batch = random_batch(config, batch_size=12, n_clusters=9, seed=10, min_len=8)
    view, copy = share_history(batch), share_history(batch, copy=True)
    assert view.hist_item.stride(0) == 0
    model = build(name, config)
    train_step(model, batch)
    model.eval()
    out_view, out_copy = model(view), model(copy)
    torch.testing.assert_close(out_view.logits, out_copy.logits, atol=1e-5, rtol=1e-5)
    if out_copy.attention is not None:
        torch.testing.assert_close(out_view.attention, out_copy.attention, atol=1e-6, rtol=1e-5)
    grads = []
    for b in (view, copy):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same DIEN negatives
        loss_of(model.train()(b), b).backward()
        grads.append(dense_grads(model))
    for g_view, g_copy in zip(*grads, strict=True):
        torch.testing.assert_close(g_view, g_copy, atol=1e-5, rtol=1e-4)


def dense_grads(model: CTRModel) -> list[torch.Tensor]:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return [g.to_dense() if g.is_sparse else g for g in grads]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_seeded_runs_are_identical(name: str, config: ModelConfig) -> None:
    batch = random_batch(config, batch_size=16, n_clusters=9, seed=7)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        model = build(name, config, seed=11)
        loss = train_step(model, batch)
        return loss, model.eval()(batch).logits.detach()

    (loss_a, logits_a), (loss_b, logits_b) = run(), run()
    assert torch.equal(loss_a, loss_b) and torch.equal(logits_a, logits_b)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_state_dict_round_trip_through_safetensors(name: str, config: ModelConfig) -> None:
    batch = random_batch(config, batch_size=16, n_clusters=9, seed=8)
    model = build(name, config, seed=1)
    train_step(model, batch)
    blob = st_save({k: v.contiguous() for k, v in model.state_dict().items()})
    clone = build(name, config, seed=2)
    clone.load_state_dict(st_load(blob))
    model.eval(), clone.eval()
    assert torch.equal(model(batch).logits, clone(batch).logits)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_cuda_scores_as_the_cpu_does_and_trains(name: str, config: ModelConfig) -> None:
    batch = random_batch(config, batch_size=16, n_clusters=9, seed=10)
    model = build(name, config, seed=3).eval()
    on_cpu = model(batch).logits.detach()
    gpu_batch = random_batch(config, batch_size=16, n_clusters=9, seed=10, device="cuda")
    model.to("cuda")
    on_gpu = model(gpu_batch).logits.detach()
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(train_step(model, gpu_batch)).item()  # Adam + SparseAdam on the GPU
    assert not torch.equal(model.eval()(gpu_batch).logits.detach(), on_gpu)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_inputs_are_not_mutated(name: str, config: ModelConfig) -> None:
    batch = random_batch(config, batch_size=8, n_clusters=9, seed=9)
    before = {f.name: getattr(batch, f.name).clone() for f in fields(batch)}
    model = build(name, config)
    loss_of(model.train()(batch), batch).backward()
    model.eval()(batch)
    assert all(torch.equal(getattr(batch, k), v) for k, v in before.items())


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("sparse", [True, False])
def test_sparse_dense_parameter_split(name: str, sparse: bool, config: ModelConfig) -> None:
    model = build(name, replace(config, sparse_embeddings=sparse))
    sparse_ids = {id(p) for p in model.sparse_parameters()}
    dense_ids = {id(p) for p in model.dense_parameters()}
    assert not sparse_ids & dense_ids
    assert sparse_ids | dense_ids == {id(p) for p in model.parameters()}
    tables = {"item.embedding.weight", "category.embedding.weight"}
    if name == "dare":
        tables |= {"attn_item.embedding.weight", "attn_category.embedding.weight"}
    named = {id(p): n for n, p in model.named_parameters()}
    assert {named[i] for i in sparse_ids} == (tables if sparse else set())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_encoder_parameters_are_dense_and_named(name: str, config: ModelConfig) -> None:
    model = build(name, config)
    assert all(hasattr(model, attr) for attr in model.encoder)
    encoder = {id(p) for p in model.encoder_parameters()}
    assert encoder <= {id(p) for p in model.dense_parameters()}
    assert bool(encoder) == (name in ("bst", "dsin", "dien"))


def test_registry_rejects_unknown_names(config: ModelConfig) -> None:
    with pytest.raises(ValueError, match="unknown model 'sim'"):
        build_model("sim", config)
    assert [build_model(n, config).name for n in MODEL_NAMES] == list(MODEL_NAMES)
