"""Offline evaluation (DARE protocol, DESIGN.md section 9): every model x seed, the same loop.

For each model and seed: train on the train split, keep the weights of the epoch with the best
valid AUC (stop after ``patience`` epochs without a gain), report test AUC, GAUC and logloss,
training time and samples/s, the mean attention weight by relative position, and for two-stage
models the NDCG@k of the search stage against exact attention (and against planted ground truth
when a truth file is given). The dataset (and so its sampled negatives) is built once; seeds vary
the model's initialisation and the shuffling.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import models
from models.base import ModelConfig, ModelOutput
from models.batch import Batch
from trainer.dataset import OfflineDataset, Samples, Split
from trainer.loop import Learner, LearnerConfig
from trainer.metrics import auc, gauc, logloss
from trainer.retrieval import TruthIndex, ndcg_at_k, window_relevance


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
    count: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ndcg_exact: list[float] = field(default_factory=list)
    ndcg_truth: list[float] = field(default_factory=list)

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
    if out.attended_index is None or on_clusters:
        return
    top = out.attended_index.cpu().numpy()
    if exact is not None:
        profile.ndcg_exact.extend(ndcg_at_k(top, exact(batch).float().cpu().numpy()).tolist())
    if truth is not None:
        rel, has = window_relevance(ds, part, truth)
        profile.ndcg_truth.extend(ndcg_at_k(top[has], rel[has]).tolist())


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
    epoch = 0
    for epoch in range(cfg.epochs):
        start = time.perf_counter()
        samples += train_epoch(learner, ds, cfg, seed * 1000 + epoch, bar)
        seconds += time.perf_counter() - start
        valid = evaluate_split(learner, ds, "valid", cfg.eval_batch_size).auc
        if not valid <= best:  # a gain, or the first epoch, or NaN on a one-class valid split
            best, best_state, best_epoch = valid, learner.state_copy(), epoch
        elif epoch - best_epoch >= cfg.patience:
            break
    learner.load_state(best_state)
    return Fit(float(best), best_epoch, epoch + 1, seconds, samples)


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
    ndcg = _nanmean(profile.ndcg_exact), _nanmean(profile.ndcg_truth)
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


def _nanmean(values: list[float]) -> float | None:
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


@dataclass(frozen=True)
class Summary:
    model: str
    runs: int
    auc: tuple[float, float]  # (mean, std over seeds)
    gauc: tuple[float, float]
    logloss: tuple[float, float]
    train_seconds: float  # mean per run
    samples_per_s: float  # mean over runs
    ndcg_exact: float | None
    ndcg_truth: float | None


def summarise(results: list[RunResult]) -> list[Summary]:
    out = []
    for name in dict.fromkeys(r.model for r in results):
        rs = [r for r in results if r.model == name]
        out.append(
            Summary(
                name,
                len(rs),
                _mean_std([r.test.auc for r in rs]),
                _mean_std([r.test.gauc for r in rs]),
                _mean_std([r.test.logloss for r in rs]),
                float(np.mean([r.train_seconds for r in rs])),
                float(np.mean([r.samples_per_s for r in rs])),
                _nanmean([np.nan if r.ndcg_exact is None else r.ndcg_exact for r in rs]),
                _nanmean([np.nan if r.ndcg_truth is None else r.ndcg_truth for r in rs]),
            )
        )
    return out


@dataclass(frozen=True)
class Comparison:
    """A model's test AUC minus the baseline's, paired by seed (same data, same seed).

    Seeds move test AUC by more than some models differ on a small log, so a mean alone can
    mislead: ``wins`` counts the seeds where the model is ahead, ``t`` is the paired t statistic
    and ``significant`` says whether |t| exceeds Student's two-sided 5% critical value for
    ``seeds - 1`` degrees of freedom (2.78 for 5 seeds).
    """

    model: str
    baseline: str
    delta: tuple[float, float]  # (mean, std over seeds)
    wins: int  # seeds where the model's test AUC is above the baseline's
    seeds: int  # seeds both ran
    t: float  # mean / (std / sqrt(seeds)); nan with fewer than 2 seeds, inf if std is 0

    @property
    def significant(self) -> bool:
        return self.seeds >= 2 and abs(self.t) > t_critical_5pct(self.seeds - 1)


# Student's t, two-sided 5% critical values for 1..30 degrees of freedom (then the normal's 1.96).
# fmt: off
_T_CRITICAL_5PCT = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)
# fmt: on


def t_critical_5pct(df: int) -> float:
    """|t| above which a two-sided paired t-test rejects at 5%.

    >>> t_critical_5pct(4), t_critical_5pct(1000)
    (2.776, 1.96)
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T_CRITICAL_5PCT[df - 1] if df <= len(_T_CRITICAL_5PCT) else 1.96


def compare_to_baseline(results: list[RunResult], baseline: str = "mean") -> list[Comparison]:
    """Each other model against ``baseline`` over the seeds both ran; [] without the baseline.

    >>> def run(m, seed, a):
    ...     return RunResult(m, seed, SplitScores(a, a, 0.5, 9), a, 0, 1, 1.0, 9, [], None, None)
    >>> rs = [run("mean", 0, 0.70), run("mean", 1, 0.80), run("din", 0, 0.75), run("din", 1, 0.79)]
    >>> c = compare_to_baseline(rs)[0]
    >>> (c.model, round(c.delta[0], 3), c.wins, c.seeds)
    ('din', 0.02, 1, 2)
    """
    base = {r.seed: r.test.auc for r in results if r.model == baseline}
    out = []
    for name in dict.fromkeys(r.model for r in results if r.model != baseline):
        diffs = [r.test.auc - base[r.seed] for r in results if r.model == name and r.seed in base]
        if diffs:
            mean, std = _mean_std(diffs)
            out.append(
                Comparison(
                    name,
                    baseline,
                    (mean, std),
                    sum(d > 0 for d in diffs),
                    len(diffs),
                    _paired_t(mean, std, len(diffs)),
                )
            )
    return out


def _paired_t(mean: float, std: float, n: int) -> float:
    if n < 2:
        return math.nan
    if std == 0.0:
        return math.copysign(math.inf, mean) if mean else math.nan
    return mean / (std / math.sqrt(n))


def comparison_table(comparisons: list[Comparison]) -> str:
    """Seed-paired AUC differences against the baseline as a Markdown table ("" if none)."""
    if not comparisons:
        return ""
    head = (
        f"| model | test AUC − {comparisons[0].baseline}'s (mean ± std over seeds) "
        "| seeds ahead | paired t | significant at 5% |\n|---|---|---|---|---|\n"
    )
    rows = [
        f"| {c.model} | {c.delta[0]:+.4f} ± {c.delta[1]:.4f} | {c.wins}/{c.seeds} | {c.t:+.2f} "
        f"| {'yes' if c.significant else 'no'} |"
        for c in comparisons
    ]
    return head + "\n".join(rows) + "\n"


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.mean(arr)), float(np.std(arr, ddof=1)) if arr.size > 1 else 0.0


def markdown_table(summaries: list[Summary]) -> str:
    """Results as a Markdown table: mean ± std over seeds."""
    head = (
        "| model | test AUC | test GAUC | test logloss | NDCG@k vs exact "
        "| train s/run | samples/s |\n|---|---|---|---|---|---|---|\n"
    )
    rows = [
        f"| {s.model} | {s.auc[0]:.4f} ± {s.auc[1]:.4f} | {s.gauc[0]:.4f} ± {s.gauc[1]:.4f} "
        f"| {s.logloss[0]:.4f} ± {s.logloss[1]:.4f} "
        f"| {'-' if s.ndcg_exact is None else f'{s.ndcg_exact:.3f}'} "
        f"| {s.train_seconds:.1f} | {s.samples_per_s:,.0f} |"
        for s in summaries
    ]
    return head + "\n".join(rows) + "\n"


def write_report(
    out: Path, results: list[RunResult], meta: dict[str, object], baseline: str = "mean"
) -> list[Path]:
    """Write results.json, results.md, auc.png and attention.png into ``out``; each model is also
    compared with ``baseline`` seed by seed when the baseline ran."""
    out.mkdir(parents=True, exist_ok=True)
    summaries = summarise(results)
    comparisons = compare_to_baseline(results, baseline)
    payload = {
        "meta": meta,
        "summary": [asdict(s) for s in summaries],
        "against_baseline": [asdict(c) | {"significant": c.significant} for c in comparisons],
        "runs": [asdict(r) | {"samples_per_s": r.samples_per_s} for r in results],
    }
    paths = [out / "results.json", out / "results.md", out / "auc.png", out / "attention.png"]
    paths[0].write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    paths[1].write_text(_markdown_report(summaries, comparisons, meta))
    plot_auc(summaries, paths[2])
    plot_attention(results, paths[3])
    return paths


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _markdown_report(
    summaries: list[Summary], comparisons: list[Comparison], meta: dict[str, object]
) -> str:
    lines = [f"- {k}: {v}" for k, v in meta.items()]
    against = comparison_table(comparisons)
    return (
        "# Offline evaluation (DARE protocol)\n\n"
        + "\n".join(lines)
        + "\n\n"
        + markdown_table(summaries)
        + (
            f"\n## Against {comparisons[0].baseline}, paired by seed\n\n{against}"
            if against
            else ""
        )
    )


def plot_auc(summaries: list[Summary], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.1 * len(summaries) + 2, 3.5))
    ax.bar(
        [s.model for s in summaries],
        [s.auc[0] for s in summaries],
        yerr=[s.auc[1] for s in summaries],
        capsize=4,
        color="tab:blue",
    )
    lo = min(s.auc[0] - s.auc[1] for s in summaries)
    ax.set_ylim(max(0.0, lo - 0.02), 1.0)
    ax.set_ylabel("test AUC (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_attention(results: list[RunResult], path: Path) -> None:
    """Share of each model's attention mass by relative position (0 = most recent), in log bins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in dict.fromkeys(r.model for r in results):
        profiles = [r.attention_by_position for r in results if r.model == name]
        width = min(len(p) for p in profiles)
        if width == 0:
            continue
        centres, share = attention_share(np.mean([p[:width] for p in profiles], axis=0))
        ax.plot(centres, share, marker="o", markersize=3, label=name)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("relative position, log bins (0 = most recent; clusters for twin_v2)")
    ax.set_ylabel("share of attention mass per position")
    ax.set_yscale("log")
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def attention_share(mean_weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean weight per position → (bin centres, mean share of the total per position in the bin).

    Bins 0, 1, 2-3, 4-7, ... smooth the far positions, where few test users have a history.

    >>> attention_share(np.array([0.5, 0.25, 0.125, 0.125]))[1].tolist()
    [0.5, 0.25, 0.125]
    """
    share = mean_weight / max(float(mean_weight.sum()), 1e-12)
    edges = np.unique(np.r_[0, 2 ** np.arange(int(np.log2(max(len(share), 1))) + 2)])
    edges = edges[edges <= len(share)]
    if edges[-1] < len(share):
        edges = np.r_[edges, len(share)]
    bins = list(itertools.pairwise(edges.tolist()))
    centres = np.array([(lo + hi - 1) / 2 for lo, hi in bins])
    means = np.array([share[lo:hi].mean() for lo, hi in bins])
    return centres, np.maximum(means, 1e-6)
