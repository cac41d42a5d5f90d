"""Offline evaluation (DARE protocol, ARCHITECTURE.md section 9): every model x seed, the same loop.

For each model and seed: train on the train split, keep the weights of the epoch with the best
valid AUC (stop after ``patience`` epochs without a gain), report test AUC, GAUC and logloss,
training time and samples/s, the mean attention weight by relative position, and for two-stage
models the NDCG@k of the search stage against exact attention (and against planted ground truth
when a truth file is given). The dataset (and so its sampled negatives) is built once; seeds vary
the model's initialisation and the shuffling.

The runs' statistics over seeds are :mod:`trainer.comparison`'s, their tables, files and plots
:mod:`trainer.evaluation_report`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

import models
from feature_store.cluster_config import ClusterConfig
from models.base import ModelConfig, ModelOutput, Values
from models.batch import Batch
from trainer.dataset import OfflineDataset, Samples, Split
from trainer.loop import Learner, LearnerConfig
from trainer.metrics import auc, gauc, logloss
from trainer.offline_clusters import ItemTable
from trainer.retrieval import (
    TruthIndex,
    history_ndcg,
    ndcg_at_k,
    same_category,
    window_relevance,
)


@dataclass(frozen=True)
class EvalConfig:
    models: tuple[str, ...] = models.MODEL_NAMES
    seeds: int = 5
    epochs: int = 3
    patience: int = 1  # epochs without a valid-AUC gain before stopping
    batch_size: int = 2048
    eval_batch_size: int = 4096
    dim: int = 64
    topk: int = 20
    lr: float = 0.01
    encoder_lr: float = 0.001  # sequence encoders (BST, DSIN, DIEN); see trainer.loop
    device: str | None = None
    max_batches: int | None = None  # per epoch, for smoke runs
    progress: bool = True
    cluster_warmup_epochs: int = 1  # TWIN-V2: epochs clustered by category before the model's own
    twin_v2_recent: bool = False  # TWIN-V2 also attends over the recent sequence (ModelConfig)
    twin_v2_age: bool = True  # TWIN-V2: time-gap bias by cluster age (ModelConfig)
    cluster_by_token: bool = ClusterConfig.by_token  # TWIN-V2: on [item, category] token rows
    twin_v2_log_size: bool = True  # TWIN-V2: ESU + ln N, as the paper (ModelConfig)
    twin_values: Values = "projected"  # TWIN, TWIN-V2: the paper's W_v, W_o or the tokens


@dataclass(frozen=True)
class SplitScores:
    auc: float
    gauc: float
    logloss: float
    n: int


@dataclass
class Profile:
    """Attention weight summed by relative position (0 = most recent) and how often it was real."""

    weight: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lengths: list[float] = field(default_factory=list)  # real positions per sample
    count: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ndcg_exact: list[float] = field(default_factory=list)
    ndcg_truth: list[float] = field(default_factory=list)
    ndcg_history: list[float] = field(default_factory=list)  # retrieval.history_ndcg
    ndcg_category: list[float] = field(default_factory=list)  # same, truth = same_category
    ndcg_returns: list[float] = field(default_factory=list)  # ndcg_history of the return records

    def add(self, attention: torch.Tensor, mask: torch.Tensor) -> None:
        """Accumulate (B, S) right-aligned attention weights of the real positions."""
        w = (attention.float() * mask).sum(0).flip(0).cpu().numpy()  # index 0 = most recent
        c = mask.sum(0).flip(0).cpu().numpy().astype(np.float64)
        n = max(self.weight.size, w.size)
        self.weight = np.pad(self.weight, (0, n - self.weight.size)) + np.pad(w, (0, n - w.size))
        self.count = np.pad(self.count, (0, n - self.count.size)) + np.pad(c, (0, n - c.size))

    def mean(self) -> list[float]:
        return (self.weight / np.maximum(self.count, 1)).tolist()


@dataclass(frozen=True)
class RunResult:
    model: str
    seed: int
    test: SplitScores
    valid_auc: float
    best_epoch: int
    epochs_run: int
    train_seconds: float
    train_samples: int
    attention_by_position: list[float]
    ndcg_exact: float | None
    ndcg_truth: float | None
    ndcg_history: float | None = None  # against the truth over the whole history
    attended_length: float | None = None  # mean real positions (behaviours or clusters) attended
    ndcg_category: float | None = None  # history NDCG, truth = every earlier same-category one
    ndcg_returns: float | None = None  # history NDCG of the samples at planted returns only

    @property
    def samples_per_s(self) -> float:
        return self.train_samples / max(self.train_seconds, 1e-9)


def model_config(ds: OfflineDataset, cfg: EvalConfig) -> ModelConfig:
    return ModelConfig(
        n_items=ds.n_items,
        n_categories=ds.n_categories,
        dim=cfg.dim,
        seq_len=ds.config.seq_len,
        topk=min(cfg.topk, ds.config.seq_len),
        twin_v2_recent=cfg.twin_v2_recent,
        twin_v2_age=cfg.twin_v2_age,
        twin_v2_log_size=cfg.twin_v2_log_size,
        twin_values=cfg.twin_values,
    )


def evaluate_split(
    learner: Learner,
    ds: OfflineDataset,
    split: Split,
    batch_size: int,
    profile: Profile | None = None,
    exact: Callable[[Batch], torch.Tensor] | None = None,
    truth: TruthIndex | None = None,
) -> SplitScores:
    """Scores of a split; with ``profile`` also attention statistics of the attention models."""
    samples = ds.split(split)
    attends = getattr(learner.model, "attends", "recent")
    probs = []
    for lo in range(0, len(samples), batch_size):
        part = samples.take(np.arange(lo, min(lo + batch_size, len(samples))))
        batch = ds.make_batch(part)
        out = learner.predict(batch)
        probs.append(torch.sigmoid(out.logits).float().cpu().numpy())
        if profile is not None:
            _profile(profile, out, batch, exact, ds, part, truth, attends)
    p = np.concatenate(probs) if probs else np.zeros(0)
    y = samples.label
    return SplitScores(auc(y, p), gauc(y, p, samples.user), logloss(y, p), len(samples))


def _profile(
    profile: Profile,
    out: ModelOutput,
    batch: Batch,
    exact: Callable[[Batch], torch.Tensor] | None,
    ds: OfflineDataset,
    part: Samples,
    truth: TruthIndex | None,
    attends: str | None,
) -> None:
    if out.attention is None:
        return
    on_clusters = attends == "cluster"
    mask = batch.cluster_mask if on_clusters else batch.hist_mask
    profile.add(out.attention, mask.to(out.attention.device))
    profile.lengths.extend(mask.sum(1).tolist())
    if out.attended_index is None:
        return
    top = out.attended_index.cpu().numpy()
    if truth is not None:
        units = unit_members(ds, part, top, mask.shape[1], on_clusters)
        keys = truth_keys(ds, part)
        relevant = [truth.get(key, np.zeros(0, np.int64)) for key in keys]
        history = history_ndcg(units, relevant, top.shape[1])
        profile.ndcg_history.extend(history.tolist())
        returns = np.array([key in truth.returns for key in keys], dtype=bool)
        profile.ndcg_returns.extend(history[returns].tolist())
        same = same_category(ds, part, [key in truth for key in keys])
        profile.ndcg_category.extend(history_ndcg(units, same, top.shape[1]).tolist())
    if on_clusters:
        return
    if exact is not None:
        profile.ndcg_exact.extend(ndcg_at_k(top, exact(batch).float().cpu().numpy()).tolist())
    if truth is not None:
        rel, has = window_relevance(ds, part, truth)
        profile.ndcg_truth.extend(ndcg_at_k(top[has], rel[has]).tolist())


def truth_keys(ds: OfflineDataset, part: Samples) -> list[tuple[str, int]]:
    """(user id, target position in the user's sequence) of each sample: the truth's keys."""
    local = part.position - ds.behaviours.user_start[part.user]
    return [(str(ds.users[u]), int(k)) for u, k in zip(part.user, local, strict=True)]


def unit_members(
    ds: OfflineDataset, part: Samples, top: np.ndarray, width: int, on_clusters: bool
) -> list[list[np.ndarray]]:
    """The user positions each retrieved slot stands for (-1 slots: nothing): a behaviour of the
    right-aligned window, or the members of a right-aligned cluster."""
    out = []
    for (_, k), u, slots in zip(truth_keys(ds, part), part.user, top, strict=True):
        if on_clusters:
            members = ds.clusters.members(ds.logs[u], k)
            first = len(members) - width  # slot 0 holds cluster `first` (may be padding)
            units = [members[first + s] if s >= 0 else np.zeros(0, np.int64) for s in slots]
        else:
            units = [np.array([k - width + s]) if s >= 0 else np.zeros(0, np.int64) for s in slots]
        out.append(units)
    return out


def train_epoch(learner: Learner, ds: OfflineDataset, cfg: EvalConfig, seed: int, bar: tqdm) -> int:
    """One shuffled pass over the train split (at most ``max_batches``); returns samples seen."""
    seen = 0
    for i, batch in enumerate(ds.batches("train", cfg.batch_size, shuffle=True, seed=seed)):
        if cfg.max_batches is not None and i >= cfg.max_batches:
            break
        loss = learner.learn_many(batch)
        seen += batch.size
        bar.update(batch.size)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
    return seen


@dataclass(frozen=True)
class Fit:
    """Outcome of training: the best valid AUC, its epoch, and the training cost."""

    valid_auc: float
    best_epoch: int
    epochs_run: int
    seconds: float
    samples: int


def fit(learner: Learner, ds: OfflineDataset, cfg: EvalConfig, seed: int, bar: tqdm) -> Fit:
    """Train up to ``cfg.epochs``; stop after ``patience`` epochs without a valid-AUC gain and
    leave the learner with the weights of its best epoch."""
    best, best_state, best_epoch, seconds, samples = -np.inf, learner.state_copy(), 0, 0.0, 0
    ds.clusters.use(None)
    best_embedder = None
    epoch = 0
    for epoch in range(cfg.epochs):
        start = time.perf_counter()
        refresh_cluster_embeddings(learner, ds, epoch, cfg)
        samples += train_epoch(learner, ds, cfg, seed * 1000 + epoch, bar)
        seconds += time.perf_counter() - start
        valid = evaluate_split(learner, ds, "valid", cfg.eval_batch_size).auc
        if not valid <= best:  # a gain, or the first epoch, or NaN on a one-class valid split
            best, best_state, best_epoch = valid, learner.state_copy(), epoch
            best_embedder = ds.clusters.embedder
        elif epoch - best_epoch >= cfg.patience:
            break
    learner.load_state(best_state)
    ds.clusters.use(best_embedder)  # the clusters the kept weights were trained with
    return Fit(float(best), best_epoch, epoch + 1, seconds, samples)


def refresh_cluster_embeddings(
    learner: Learner, ds: OfflineDataset, epoch: int, cfg: EvalConfig
) -> None:
    """TWIN-V2 with the worker's clustering: from epoch ``cluster_warmup_epochs`` on, cluster with
    the model's item table as it is at the start of the epoch (``trainer.offline_clusters``)."""
    uses_clusters = getattr(learner.model, "attends", None) == "cluster"
    if not uses_clusters or ds.config.clustering != "kmeans":
        return
    if epoch >= cfg.cluster_warmup_epochs:
        table = learner.model.item.weight.detach().float().cpu().numpy()
        categories = learner.model.category.weight.detach().float().cpu().numpy()
        ds.clusters.use(ItemTable(table, epoch + 1, categories), by_token=cfg.cluster_by_token)


def train_one(
    name: str,
    seed: int,
    ds: OfflineDataset,
    cfg: EvalConfig,
    truth: TruthIndex | None = None,
) -> RunResult:
    """Train one model with one seed, select the epoch on valid AUC, score the test split."""
    torch.manual_seed(seed)
    model = models.build_model(name, model_config(ds, cfg))
    learner = Learner(model, LearnerConfig(lr=cfg.lr, encoder_lr=cfg.encoder_lr, device=cfg.device))
    total = _batches_per_epoch(ds, cfg) * cfg.epochs
    with tqdm(
        total=total,
        desc=f"{name} seed {seed}",
        unit="sample",
        unit_scale=True,
        disable=not cfg.progress,
        leave=False,
    ) as bar:
        result = fit(learner, ds, cfg, seed, bar)
    profile = Profile()
    exact = exact_attention_fn(learner)
    test = evaluate_split(learner, ds, "test", cfg.eval_batch_size, profile, exact, truth)
    ndcg = finite_mean(profile.ndcg_exact), finite_mean(profile.ndcg_truth)
    history = finite_mean(profile.ndcg_history), finite_mean(profile.lengths)
    category, returns = finite_mean(profile.ndcg_category), finite_mean(profile.ndcg_returns)
    return RunResult(
        name,
        seed,
        test,
        result.valid_auc,
        result.best_epoch,
        result.epochs_run,
        result.seconds,
        result.samples,
        profile.mean(),
        *ndcg,
        *history,
        category,
        returns,
    )


def exact_attention_fn(learner: Learner) -> Callable[[Batch], torch.Tensor] | None:
    """Exact target attention of a two-stage model: its ``attend(batch, None)`` (no search stage).

    ``None`` for models without a search stage.
    """
    attend = getattr(learner.model, "attend", None)
    if attend is None:
        return None

    @torch.inference_mode()
    def attention(batch: Batch) -> torch.Tensor:
        learner.model.eval()
        out: ModelOutput = attend(batch.to(learner.device), None)
        assert out.attention is not None
        return out.attention

    return attention


def _batches_per_epoch(ds: OfflineDataset, cfg: EvalConfig) -> int:
    n = len(ds.train)
    if cfg.max_batches is not None:
        n = min(n, cfg.max_batches * cfg.batch_size)
    return n


def finite_mean(values: list[float]) -> float | None:
    """The mean of the finite values; None when there is none."""
    arr = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else None


def run_evaluation(
    ds: OfflineDataset,
    cfg: EvalConfig,
    truth: TruthIndex | None = None,
    on_result: Callable[[list[RunResult]], object] | None = None,
) -> list[RunResult]:
    """Every model x seed, in that order; ``on_result`` sees the results so far after each run
    (the CLI rewrites its report, so a long evaluation leaves partial results if stopped)."""
    results: list[RunResult] = []
    for name in cfg.models:
        for seed in range(cfg.seeds):
            results.append(train_one(name, seed, ds, cfg, truth))
            if on_result is not None:
                on_result(results)
    return results
