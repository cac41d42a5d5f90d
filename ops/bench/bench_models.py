"""Training throughput and scoring latency per model, each beside a plain PyTorch reference.

Setting (the DARE reference's Taobao setup): a Taobao-sized vocabulary (4,068,791 items, 9,408
categories), history 200 (every position real), batch 2048, dim 64, top-k 20; ids drawn
uniformly, so a batch touches ~400k distinct item rows (the worst case for sparse updates).

- **ours**: ``sparse_embeddings=True`` tables updated by lazy ``SparseAdam``, dense weights by Adam
  (:class:`trainer.loop.Learner`).
- **reference**: the same model with dense ``nn.Embedding`` gradients and one plain
  ``torch.optim.Adam`` over every parameter, as the public DARE code trains.

Both run in one process with glibc's malloc tuned as in ``twinstream train`` / ``evaluate`` / the
worker (:mod:`ops.malloc`; ``--default-malloc`` skips it): a training step at this shape frees and
re-allocates ~100 MB tensors, which glibc otherwise returns to the kernel and re-faults each step.

- **authors** (``--authors-dare PATH``, DARE only): the DARE authors' own code from a checkout of
  thuml/DARE, its ``DIN`` with the flags of its ``scripts/taobao.sh`` at ``--dim`` and at its own
  dim 16, each beside ours at the same dim (:mod:`ops.bench.authors_dare`). Without the path
  those rows are skipped with a line that says so.

Every "x slower than ours" ratio divides ours by that row, both measured in the same run at the
same dim: the reference rows against ours at ``--dim``, the authors' rows against ours at theirs.

Scoring: 100 candidates sharing one history. ``ours`` passes that history once, broadcast over the
candidates (a stride-0 view, no copy); ``reference`` copies it per candidate. Latency p50/p99 over
``--score-reps`` calls after a warm-up.

    python -m ops.bench.bench_models --models dare,twin --steps 5
    python -m ops.bench.bench_models --models dare --authors-dare /tmp/dare_authors
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import models
from models.base import ModelConfig, ModelOutput
from models.batch import Batch
from ops.bench import authors_dare
from ops.malloc import tune_malloc
from trainer.loop import Learner, LearnerConfig, resolve_device

TAOBAO_ITEMS = 4_068_791
TAOBAO_CATEGORIES = 9_408


@dataclass(frozen=True)
class BenchConfig:
    models: tuple[str, ...] = models.MODEL_NAMES
    steps: int = 5
    warmup: int = 1
    batch_size: int = 2048
    seq_len: int = 200
    clusters: int = 40
    dim: int = 64
    topk: int = 20
    candidates: int = 100
    score_reps: int = 200
    device: str | None = None
    reference: bool = True
    authors_dare: Path | None = None  # a checkout of thuml/DARE
    authors_dims: tuple[int, ...] = (64, 16)  # the run's dim and the authors' own


def model_config(cfg: BenchConfig, sparse: bool) -> ModelConfig:
    return ModelConfig(
        n_items=TAOBAO_ITEMS + 1,
        n_categories=TAOBAO_CATEGORIES + 1,
        dim=cfg.dim,
        seq_len=cfg.seq_len,
        topk=cfg.topk,
        sparse_embeddings=sparse,
    )


def random_batch(cfg: BenchConfig, n: int, seed: int) -> Batch:
    """A full-history batch with uniform ids over the whole vocabulary."""
    g = torch.Generator().manual_seed(seed)
    length, c = cfg.seq_len, cfg.clusters

    def ids(high: int, *shape: int) -> torch.Tensor:
        return torch.randint(1, high + 1, shape, generator=g)

    return Batch(
        target_item=ids(TAOBAO_ITEMS, n),
        target_category=ids(TAOBAO_CATEGORIES, n),
        hist_item=ids(TAOBAO_ITEMS, n, length),
        hist_category=ids(TAOBAO_CATEGORIES, n, length),
        hist_mask=torch.ones(n, length, dtype=torch.bool),
        hist_session=torch.arange(length)
        .div(6, rounding_mode="floor")
        .expand(n, length)
        .contiguous(),
        hist_age=torch.arange(length - 1, -1, -1).expand(n, length).contiguous(),
        hist_dense=torch.zeros(n, length, 0),
        cluster_item=ids(TAOBAO_ITEMS, n, c),
        cluster_category=ids(TAOBAO_CATEGORIES, n, c),
        cluster_size=torch.full((n, c), 5.0),
        cluster_mask=torch.ones(n, c, dtype=torch.bool),
        cluster_dense=torch.zeros(n, c, 0),
        target_dense=torch.zeros(n, 0),
        label=torch.randint(0, 2, (n,), generator=g).float(),
    )


def candidates_batch(cfg: BenchConfig, seed: int, share: bool) -> Batch:
    """``cfg.candidates`` targets with one user's history: broadcast (``share``) or copied."""
    one = random_batch(cfg, 1, seed)
    targets = random_batch(cfg, cfg.candidates, seed + 1)
    n = cfg.candidates

    def spread(x: torch.Tensor) -> torch.Tensor:
        wide = x.expand(n, *x.shape[1:])
        return wide if share else wide.contiguous()

    per_user = (
        "hist_item",
        "hist_category",
        "hist_mask",
        "hist_session",
        "hist_age",
        "hist_dense",
        "cluster_item",
        "cluster_category",
        "cluster_size",
        "cluster_mask",
        "cluster_dense",
    )
    return replace(targets, label=None, **{k: spread(getattr(one, k)) for k in per_user})


def reference_step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> Callable[[Batch], float]:
    def step(batch: Batch) -> float:
        model.train()
        out: ModelOutput = model(batch)
        assert batch.label is not None
        loss = F.binary_cross_entropy_with_logits(out.logits, batch.label)
        if out.aux_loss is not None:
            loss = loss + out.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def samples_per_s(step: Callable[[Batch], float], batch: Batch, cfg: BenchConfig) -> float:
    for _ in range(cfg.warmup):
        step(batch)
    _sync(cfg)
    start = time.perf_counter()
    for _ in range(cfg.steps):
        step(batch)
    _sync(cfg)
    return cfg.steps * batch.size / (time.perf_counter() - start)


def latency_ms(model: torch.nn.Module, batch: Batch, cfg: BenchConfig) -> tuple[float, float]:
    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(cfg.score_reps + 10):
            start = time.perf_counter()
            model(batch)
            _sync(cfg)
            if i >= 10:
                times.append((time.perf_counter() - start) * 1e3)
    q = np.percentile(times, [50, 99])
    return float(q[0]), float(q[1])


def _sync(cfg: BenchConfig) -> None:
    if resolve_device(cfg.device).type == "cuda":
        torch.cuda.synchronize()


@dataclass(frozen=True)
class Row:
    model: str
    variant: str
    train_samples_per_s: float
    score_p50_ms: float
    score_p99_ms: float
    dim: int = 64

    @property
    def ours(self) -> bool:
        return self.variant.startswith("ours")


def bench_ours(name: str, cfg: BenchConfig, batch: Batch) -> Row:
    device = resolve_device(cfg.device)
    learner = Learner(
        models.build_model(name, model_config(cfg, sparse=True)), LearnerConfig(device=str(device))
    )
    rate = samples_per_s(learner.learn_many, batch.to(device), cfg)
    p50, p99 = latency_ms(learner.model, candidates_batch(cfg, 7, share=True).to(device), cfg)
    return Row(name, "ours (sparse, lazy Adam)", rate, p50, p99, cfg.dim)


def bench_reference(name: str, cfg: BenchConfig, batch: Batch) -> Row:
    device = resolve_device(cfg.device)
    model = models.build_model(name, model_config(cfg, sparse=False)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=0.01, foreach=False)
    rate = samples_per_s(reference_step(model, opt), batch.to(device), cfg)
    p50, p99 = latency_ms(model, candidates_batch(cfg, 7, share=False).to(device), cfg)
    return Row(name, "reference (dense, Adam)", rate, p50, p99, cfg.dim)


def bench_authors(cfg: BenchConfig, batch: Batch) -> Row:
    """The DARE authors' code at ``cfg.dim`` (:mod:`ops.bench.authors_dare`), on CPU."""
    assert cfg.authors_dare is not None
    n_items, n_cats = TAOBAO_ITEMS + 1, TAOBAO_CATEGORIES + 1
    model = authors_dare.build(cfg.authors_dare, cfg.dim, n_items, n_cats, cfg.seq_len)
    data = authors_dare.their_batch(batch, seed=0)
    rate = authors_dare.train_rate(model, data, cfg.steps, cfg.warmup)
    del data
    gc.collect()
    candidates = authors_dare.their_batch(candidates_batch(cfg, 7, share=False), seed=7)
    p50, p99 = authors_dare.score_latency_ms(model, candidates, cfg.score_reps)
    return Row("dare", "authors' code (thuml/DARE)", rate, p50, p99, cfg.dim)


def run(cfg: BenchConfig) -> list[Row]:
    batch = random_batch(cfg, cfg.batch_size, seed=0)
    rows = []
    for name in cfg.models:
        variants = [bench_ours] + ([bench_reference] if cfg.reference else [])
        for bench in variants:
            rows.append(bench(name, cfg, batch))
            _print_row(rows[-1], rows)
            gc.collect()
    if "dare" not in cfg.models:
        return rows
    if cfg.authors_dare is None:
        print("dare     authors' code: skipped (give --authors-dare PATH, a thuml/DARE checkout)")
        return rows
    for dim in dict.fromkeys(cfg.authors_dims):
        rows += run_authors(replace(cfg, dim=dim), batch, rows)
    return rows


def run_authors(cfg: BenchConfig, batch: Batch, rows: list[Row]) -> list[Row]:
    """Ours at ``cfg.dim`` (unless measured already), then the authors' code at that dim."""
    out = []
    ours = next((r for r in rows if r.model == "dare" and r.dim == cfg.dim and r.ours), None)
    if ours is None:
        batch = random_batch(cfg, cfg.batch_size, seed=0)
        out.append(bench_ours("dare", cfg, batch))
        _print_row(out[-1], rows + out)
        gc.collect()
    out.append(bench_authors(cfg, batch))
    _print_row(out[-1], rows + out)
    gc.collect()
    return out


def _print_row(row: Row, rows: list[Row]) -> None:
    """One row; other than ours, with ours' rate over its rate (same model, same dim)."""
    ours = next(r for r in rows if r.model == row.model and r.dim == row.dim and r.ours)
    ratio = f" ({ours.train_samples_per_s / row.train_samples_per_s:.1f}x slower than ours)"
    note = ratio if row is not ours else ""
    print(
        f"{row.model:8s} dim {row.dim:3d} {row.variant:27s} "
        f"train {row.train_samples_per_s:9,.0f} samples/s  "
        f"score {row.score_p50_ms:7.2f} ms p50 {row.score_p99_ms:7.2f} ms p99{note}",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--models", default=",".join(models.MODEL_NAMES))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--score-reps", type=int, default=200)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--seq-len", type=int, default=BenchConfig.seq_len, help="recent behaviours")
    p.add_argument("--clusters", type=int, default=BenchConfig.clusters, help="TWIN-V2's clusters")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--no-reference", dest="reference", action="store_false")
    p.add_argument(
        "--authors-dare",
        type=Path,
        default=None,
        metavar="PATH",
        help="a checkout of github.com/thuml/DARE: also run its DIN (DARE flags) at --dim and 16",
    )
    p.add_argument(
        "--default-malloc", action="store_true", help="skip the trainers' glibc malloc tuning"
    )
    args = p.parse_args(argv)
    tuned = not args.default_malloc and tune_malloc()
    cfg = BenchConfig(
        models=tuple(args.models.split(",")),
        steps=args.steps,
        score_reps=args.score_reps,
        dim=args.dim,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        clusters=args.clusters,
        device=args.device,
        reference=args.reference,
        authors_dare=args.authors_dare,
        authors_dims=(args.dim, 16),
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; "
        f"{TAOBAO_ITEMS:,} items, batch {cfg.batch_size}, L {cfg.seq_len}, "
        f"clusters {cfg.clusters}, dim {cfg.dim}, top-k {cfg.topk}; "
        f"malloc tuned as in the trainers: {tuned}"
    )
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
