"""Seed-paired statistics of an offline evaluation: each model's mean ± std over seeds
(:func:`summarise`) and its test AUC against a baseline's, seed by seed
(:func:`compare_to_baseline`, a paired t-test at 5%).

The evaluation (:mod:`trainer.offline`) gives one :class:`trainer.offline.RunResult` per model and
seed; its report (:mod:`trainer.evaluation_report`) tabulates and plots what is computed here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from trainer.offline import RunResult, finite_mean

BASELINE = "mean"  # the model every other one is compared with, unless told otherwise


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
    ndcg_history: float | None = None  # retrieval.history_ndcg, with a truth file
    attended_length: float | None = None  # mean real positions of the attended sequence
    ndcg_category: float | None = None  # history NDCG against retrieval.same_category
    ndcg_returns: float | None = None  # history NDCG of the samples at planted returns


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
                finite_mean([np.nan if r.ndcg_exact is None else r.ndcg_exact for r in rs]),
                finite_mean([np.nan if r.ndcg_truth is None else r.ndcg_truth for r in rs]),
                finite_mean([np.nan if r.ndcg_history is None else r.ndcg_history for r in rs]),
                finite_mean(
                    [np.nan if r.attended_length is None else r.attended_length for r in rs]
                ),
                finite_mean([np.nan if r.ndcg_category is None else r.ndcg_category for r in rs]),
                finite_mean([np.nan if r.ndcg_returns is None else r.ndcg_returns for r in rs]),
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


def compare_to_baseline(results: list[RunResult], baseline: str = BASELINE) -> list[Comparison]:
    """Each other model against ``baseline`` over the seeds both ran; [] without the baseline.

    >>> from trainer.offline import SplitScores
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


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.mean(arr)), float(np.std(arr, ddof=1)) if arr.size > 1 else 0.0
