"""The report of an offline evaluation (``twinstream evaluate``): Markdown tables of the
summaries and of the seed-paired comparisons, ``results.json``, ``results.md`` and two plots
(test AUC by model, attention mass by relative position). Not to be confused with
:mod:`ops.report`, the HTML report of an online run.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from trainer.comparison import BASELINE, Comparison, Summary, compare_to_baseline, summarise
from trainer.offline import RunResult


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


def markdown_table(summaries: list[Summary]) -> str:
    """Results as a Markdown table: mean ± std over seeds."""
    head = (
        "| model | test AUC | test GAUC | test logloss | NDCG@k vs exact "
        "| NDCG@k vs truth, whole history | same, every same-category one | same, returns only "
        "| attended length | train s/run | samples/s |\n" + "|---" * 11 + "|\n"
    )
    rows = [
        f"| {s.model} | {s.auc[0]:.4f} ± {s.auc[1]:.4f} | {s.gauc[0]:.4f} ± {s.gauc[1]:.4f} "
        f"| {s.logloss[0]:.4f} ± {s.logloss[1]:.4f} "
        f"| {_or_dash(s.ndcg_exact, '.3f')} | {_or_dash(s.ndcg_history, '.3f')} "
        f"| {_or_dash(s.ndcg_category, '.3f')} | {_or_dash(s.ndcg_returns, '.3f')} "
        f"| {_or_dash(s.attended_length, '.1f')} "
        f"| {s.train_seconds:.1f} | {s.samples_per_s:,.0f} |"
        for s in summaries
    ]
    return head + "\n".join(rows) + "\n"


def _or_dash(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def write_report(
    out: Path, results: list[RunResult], meta: dict[str, object], baseline: str = BASELINE
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
