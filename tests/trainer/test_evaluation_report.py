"""The offline evaluation's report as ``twinstream evaluate`` writes it: results.json,
results.md and the plots, with or without the baseline among the models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ops import evaluate_cli
from streaming.synthetic import GeneratorConfig, generate


def test_cli_says_when_the_baseline_did_not_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
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
