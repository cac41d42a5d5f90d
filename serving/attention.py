"""Attention statistics: what a model attends to, as histograms the trainer and scorer share.

Per scored row: the normalised entropy of the attention, the mass of its ``TOP_MASS_K`` largest
weights, the mass per recency bucket and the mass on behaviours of the target's category, each
a histogram over ``BINS`` equal bins of [0, 1]. The trainer stores the reference in every
snapshot's manifest; the scorer builds the same histograms over live traffic
(:mod:`serving.drift`) and compares them with :func:`js_divergence` and :func:`psi`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from models.batch import Batch

BINS = 20
TOP_MASS_K = 5
RECENCY_BUCKETS = ((0, 9), (10, 49), (50, 199), (200, None))  # positions from the newest
STAT_NAMES = (
    "entropy",
    "top_mass",
    "recency_0_9",
    "recency_10_49",
    "recency_50_199",
    "recency_200_plus",
    "same_category",
)


def attended_sequence(batch: Batch, attends: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, category rows) of the sequence a model's ``ModelOutput.attention`` covers."""
    if attends == "cluster":
        return batch.cluster_mask, batch.cluster_category
    return batch.hist_mask, batch.hist_category


@torch.no_grad()
def attention_stats(
    attention: torch.Tensor,  # (B, S) weights, right-aligned sequence
    mask: torch.Tensor,  # (B, S) bool
    category: torch.Tensor,  # (B, S) category rows of the sequence
    target_category: torch.Tensor,  # (B,)
) -> npt.NDArray[np.float64]:
    """(R, len(STAT_NAMES)) statistics of the rows that put any weight on a real position.

    Weights are normalised per row first (DIN's are not softmax-normalised), so every
    statistic lies in [0, 1]. Entropy is divided by ln(real positions) (0 for one position).
    """
    w = attention.float() * mask  # (B, S)
    total = w.sum(1)  # (B,)
    keep = total > 0
    w, mask, category = w[keep], mask[keep], category[keep]
    p = w / total[keep].unsqueeze(1)  # (R, S)
    n = mask.sum(1).float()  # (R,)
    entropy = -(p * p.clamp_min(1e-30).log()).sum(1) / n.log().clamp_min(1e-12)
    entropy = torch.where(n > 1, entropy, torch.zeros_like(entropy))
    top = p.topk(min(TOP_MASS_K, p.shape[1]), dim=1).values.sum(1)
    age = torch.arange(p.shape[1] - 1, -1, -1, device=p.device)  # (S,) 0 = newest position
    buckets = [
        p[:, (age >= lo) & (age <= (hi if hi is not None else age.max()))].sum(1)
        for lo, hi in RECENCY_BUCKETS
    ]
    same = (p * (category == target_category[keep].unsqueeze(1))).sum(1)
    stats = torch.stack([entropy, top, *buckets, same], dim=1).clamp(0.0, 1.0)  # (R, 7)
    return stats.double().cpu().numpy()


class AttentionWindow:
    """The statistics of the last ``window`` scored rows, summarised as histograms.

    >>> w = AttentionWindow(window=4)
    >>> att = torch.tensor([[0.0, 0.5, 0.5], [0.0, 0.0, 1.0]])
    >>> mask = torch.tensor([[False, True, True], [False, True, True]])
    >>> cat = torch.tensor([[0, 3, 4], [0, 3, 4]])
    >>> w.update(attention_stats(att, mask, cat, torch.tensor([3, 3])))
    >>> ref = w.reference("recent")
    >>> ref["rows"], ref["histograms"]["entropy"][-1], ref["histograms"]["same_category"][0]
    (2, 1, 1)
    """

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = window
        self._stats = np.zeros((window, len(STAT_NAMES)), dtype=np.float64)
        self._next = 0

    def __len__(self) -> int:
        return min(self._next, self.window)

    def update(self, stats: npt.NDArray[np.float64]) -> None:
        stats = stats[-self.window :]
        slots = (self._next + np.arange(stats.shape[0])) % self.window
        self._stats[slots] = stats
        self._next += stats.shape[0]

    def counts(self) -> npt.NDArray[np.int64]:
        """(len(STAT_NAMES), BINS) histogram counts of the window (1.0 falls in the last bin)."""
        values = self._stats[: len(self)]
        idx = np.minimum((values * BINS).astype(np.int64), BINS - 1)  # (R, 7)
        out = np.zeros((len(STAT_NAMES), BINS), dtype=np.int64)
        for j in range(len(STAT_NAMES)):
            out[j] = np.bincount(idx[:, j], minlength=BINS)
        return out

    def reference(
        self, sequence: str, counts: npt.NDArray[np.int64] | None = None
    ) -> dict[str, Any]:
        """The JSON-ready reference distribution (``counts`` overrides, e.g. summed over ranks)."""
        c = self.counts() if counts is None else counts
        return reference_dict(sequence, c)


def reference_dict(sequence: str, counts: npt.NDArray[np.int64]) -> dict[str, Any]:
    return {
        "sequence": sequence,
        "rows": int(counts[0].sum()),
        "bin_edges": np.linspace(0.0, 1.0, BINS + 1).round(6).tolist(),
        "top_mass_k": TOP_MASS_K,
        "recency_buckets": [list(b) for b in RECENCY_BUCKETS],
        "histograms": {name: counts[j].tolist() for j, name in enumerate(STAT_NAMES)},
    }


def _distribution(counts: Sequence[float], eps: float) -> npt.NDArray[np.float64]:
    c = np.asarray(counts, dtype=np.float64) + eps
    return c / c.sum()


def js_divergence(p_counts: Sequence[float], q_counts: Sequence[float]) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between two histograms of counts.

    >>> js_divergence([5, 5], [5, 5]), round(js_divergence([10, 0], [0, 10]), 3)
    (0.0, 1.0)
    """
    p, q = _distribution(p_counts, 1e-12), _distribution(q_counts, 1e-12)
    m = 0.5 * (p + q)
    return max(0.0, 0.5 * _kl(p, m) + 0.5 * _kl(q, m))


def _kl(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    return float(np.sum(a * np.log2(a / b)))


def psi(reference: Sequence[float], live: Sequence[float], eps: float = 1e-4) -> float:
    """Population stability index of ``live`` against ``reference`` (0 = same distribution).

    >>> psi([1, 1], [1, 1])
    0.0
    """
    r, q = _distribution(reference, eps), _distribution(live, eps)
    return float(np.sum((q - r) * np.log(q / r)))
