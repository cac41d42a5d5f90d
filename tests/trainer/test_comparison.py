"""Seed-paired statistics of an offline evaluation: mean ± std over seeds, the paired
comparison with the baseline and its significance, and their Markdown tables."""

from __future__ import annotations

import math

import pytest

from trainer.comparison import compare_to_baseline, summarise
from trainer.evaluation_report import comparison_table, markdown_table
from trainer.offline import RunResult, SplitScores


def _run(model: str, seed: int, auc: float) -> RunResult:
    return RunResult(
        model, seed, SplitScores(auc, auc, 0.5, 10), auc, 0, 1, 2.0, 100, [], None, None
    )


def test_summary_is_mean_and_std_over_seeds() -> None:
    (s,) = summarise([_run("m", 0, 0.7), _run("m", 1, 0.8), _run("m", 2, 0.9)])
    assert s.auc[0] == pytest.approx(0.8) and s.auc[1] == pytest.approx(0.1)
    assert s.samples_per_s == pytest.approx(50.0)
    assert "0.8000 ± 0.1000" in markdown_table([s])


def test_comparison_pairs_seeds_with_the_baseline() -> None:
    results = [_run("mean", s, a) for s, a in enumerate([0.70, 0.80, 0.75])]
    results += [_run("din", s, a) for s, a in enumerate([0.72, 0.79, 0.78])]  # +.02 -.01 +.03
    results += [_run("bst", 2, 0.70)]  # one seed only: compared on that seed, no t
    din, bst = compare_to_baseline(results)
    assert din.delta[0] == pytest.approx(0.04 / 3) and din.delta[1] == pytest.approx(0.020817, 1e-4)
    assert (din.wins, din.seeds) == (2, 3)
    assert din.t == pytest.approx((0.04 / 3) / (0.020817 / math.sqrt(3)), 1e-4)
    assert (bst.delta[0], bst.wins, bst.seeds) == (pytest.approx(-0.05), 0, 1) and math.isnan(bst.t)
    table = comparison_table([din, bst])
    assert "| din | +0.0133 ± 0.0208 | 2/3 | +1.11 | no |" in table and "mean's" in table
    assert not din.significant and not bst.significant  # t 1.11 < 4.303 (2 degrees of freedom)


def test_a_consistent_lead_is_significant() -> None:
    results = [_run("mean", s, 0.70 + 0.01 * s) for s in range(5)]
    results += [_run("din", s, 0.73 + 0.01 * s + 0.002 * (-1) ** s) for s in range(5)]
    (c,) = compare_to_baseline(results)
    assert c.wins == 5 and c.t > 2.776 and c.significant
    assert "| yes |" in comparison_table([c])


def test_comparison_needs_the_baseline() -> None:
    assert compare_to_baseline([_run("din", 0, 0.7)]) == []
    assert comparison_table([]) == ""


def test_identical_seeds_give_an_infinite_t() -> None:
    (c,) = compare_to_baseline(
        [_run("mean", s, 0.7) for s in (0, 1)] + [_run("din", s, 0.8) for s in (0, 1)]
    )
    assert c.t == math.inf and c.wins == 2
