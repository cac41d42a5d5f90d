"""Offline evaluation smoke runs: every model trains and scores; the CLI writes its report."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from ops import evaluate_cli
from streaming.synthetic import GeneratorConfig, generate
from tests.support.events import synthetic_log
from trainer.dataset import DatasetConfig, OfflineDataset, build_dataset
from trainer.offline import (
    EvalConfig,
    RunResult,
    SplitScores,
    compare_to_baseline,
    comparison_table,
    markdown_table,
    run_evaluation,
    summarise,
)

TINY = EvalConfig(seeds=1, epochs=2, dim=4, topk=4, batch_size=64, max_batches=3, progress=False)


@pytest.fixture(scope="module")
def ds() -> OfflineDataset:
    log = synthetic_log(n_users=16, n_events=900)
    return build_dataset(log, DatasetConfig(seq_len=16, min_events=5, max_clusters=6))


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_every_model_trains_and_scores(ds: OfflineDataset, name: str) -> None:
    (result,) = run_evaluation(ds, replace(TINY, models=(name,)))
    assert result.test.n == len(ds.test)
    assert 0.0 <= result.test.auc <= 1.0 and math.isfinite(result.test.logloss)
    assert result.train_samples == min(len(ds.train), 3 * 64) * result.epochs_run
    assert result.samples_per_s > 0
    if name != "mean":  # every attention model reports where its attention goes
        assert result.attention_by_position and np.isfinite(result.attention_by_position).all()
    if name in ("twin", "dare"):  # two-stage over the recent sequence
        assert result.ndcg_exact is not None and 0.0 < result.ndcg_exact <= 1.0 + 1e-9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_every_model_evaluates_on_cuda(ds: OfflineDataset, name: str) -> None:
    (result,) = run_evaluation(ds, replace(TINY, models=(name,), device="cuda"))
    assert 0.0 <= result.test.auc <= 1.0 and math.isfinite(result.test.logloss)


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


def test_cli_says_when_the_baseline_did_not_run(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    synth = generate(GeneratorConfig(users=8, categories=10, long_users=0, seed=2))
    synth.write(tmp_path / "UserBehavior.csv")
    args = ["--data", str(tmp_path / "UserBehavior.csv"), "--format", "taobao", "--models", "din"]
    args += ["--seeds", "1", "--epochs", "1", "--dim", "4", "--seq-len", "8", "--max-batches", "1"]
    args += [
        "--behaviour-types",
        "click,cart,fav,buy",
        "--no-progress",
        "--out",
        str(tmp_path / "o"),
    ]
    assert evaluate_cli.main(args) == 0
    assert "--baseline mean is not among --models" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "results.json").read_text())["against_baseline"] == []


def test_cli_writes_json_markdown_and_plots(tmp_path: Path) -> None:
    synth = generate(GeneratorConfig(users=15, categories=10, long_users=0, seed=1))
    truth = synth.write(tmp_path / "UserBehavior.csv")
    out = tmp_path / "out"
    code = evaluate_cli.main(
        [
            "--data",
            str(tmp_path / "UserBehavior.csv"),
            "--format",
            "taobao",
            "--models",
            "mean,dare",
            "--seeds",
            "2",
            "--epochs",
            "1",
            "--dim",
            "4",
            "--seq-len",
            "20",
            "--batch-size",
            "64",
            "--max-batches",
            "2",
            "--no-progress",
            "--behaviour-types",
            "click,cart,fav,buy",
            "--truth",
            str(truth),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    assert [s["model"] for s in report["summary"]] == ["mean", "dare"]
    assert len(report["runs"]) == 4
    dare = report["summary"][1]
    assert dare["ndcg_exact"] is not None and dare["ndcg_truth"] is not None
    (against,) = report["against_baseline"]
    assert (against["model"], against["baseline"], against["seeds"]) == ("dare", "mean", 2)
    assert isinstance(against["significant"], bool)
    markdown = (out / "results.md").read_text()
    assert "| dare |" in markdown and "## Against mean, paired by seed" in markdown
    for png in ("auc.png", "attention.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
