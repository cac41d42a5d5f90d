"""``twinstream evaluate``: the offline model-zoo evaluation (DARE protocol) on a behaviour log.

    twinstream evaluate --data ../shared/data/taobao_users/UserBehavior.csv --format taobao \\
        --models din,twin,dare --seeds 5 --epochs 3 --dim 64 --out runs/eval-taobao

Also runnable as ``python -m ops.evaluate_cli ...``. Writes ``results.json``, ``results.md``,
``auc.png`` and ``attention.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ops.arguments import Flag, add_fields, field_values, positive_int

HELP = "Train and compare models offline (DARE protocol): AUC, GAUC, logloss over seeds"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options: the log to read, one per field of :class:`trainer.offline.EvalConfig` and of
    :class:`trainer.dataset.DatasetConfig` with their defaults, the baseline, where to write."""
    from trainer.comparison import BASELINE
    from trainer.dataset import DatasetConfig
    from trainer.offline import EvalConfig

    p.add_argument("--data", type=Path, required=True, help="log file (movielens: its folder)")
    p.add_argument(
        "--format", required=True, choices=["taobao", "movielens", "jsonl", "csv", "parquet"]
    )
    add_fields(p.add_argument_group("evaluation"), EvalConfig, {
        "models": Flag("comma-separated model names"),
        "seeds": Flag(type=positive_int),
        "epochs": Flag(type=positive_int),
        "patience": Flag("epochs without valid gain", positive_int),
        "dim": Flag(type=positive_int),
        "topk": Flag(type=positive_int),
        "batch_size": Flag(type=positive_int),
        "lr": Flag(),
        "encoder_lr": Flag("sequence encoders (BST, DSIN, DIEN)"),
        "max_batches": Flag("per epoch (smoke runs)", positive_int),
        "device": Flag("cpu, cuda, cuda:1 (default: CUDA if present)"),
        "progress": Flag(),
        "cluster_warmup_epochs": Flag("TWIN-V2: epochs by category first", int),
        "twin_v2_recent": Flag("TWIN-V2 also attends over the recent sequence"),
        "twin_v2_age": Flag("TWIN-V2 without the time-gap bias by cluster age"),
        "cluster_by_token": Flag("TWIN-V2: cluster on item rows, not [item, category] tokens"),
        "twin_v2_log_size": Flag("TWIN-V2: ESU without + ln N (not the paper)",
                                 name="--no-twin-v2-log-size"),
        "twin_values": Flag("TWIN, TWIN-V2 ESU values: W_v, W_o (the paper) or the tokens "
                            "(the DARE reference's TWIN)", str, choices=("projected", "tokens")),
    })  # fmt: skip
    dataset = p.add_argument_group("dataset")
    add_fields(dataset, DatasetConfig, {
        "seq_len": Flag(type=positive_int),
        "negatives": Flag(),
        "min_events": Flag("drop shorter users", positive_int),
        "train_stride": Flag("DARE: 5", positive_int),
        "max_train_targets": Flag("DARE: 19", positive_int),
        "behaviour_types": Flag("comma-separated event types"),
        "seed": Flag("seed of the negative sampling", name="--data-seed"),
        "clustering": Flag("TWIN-V2: the worker's k-means or category groups", str,
                           choices=("kmeans", "category")),
        "max_clusters": Flag("TWIN-V2: newest clusters kept", positive_int),
        "cluster_raw_recent": Flag("TWIN-V2: newest behaviours never clustered (0: as the paper)",
                                   int),
        "cluster_raw_until": Flag("TWIN-V2: histories of at most this many behaviours attended "
                                  "raw, not clustered (0: all clustered, as the paper)", int),
    })  # fmt: skip
    dataset.add_argument(
        "--min-ts",
        type=float,
        default=0.0,
        help="oldest event time kept (s); historical logs such as MovieLens start in 1996",
    )
    p.add_argument("--truth", type=Path, default=None, help="planted ground truth (JSON lines)")
    p.add_argument(
        "--baseline",
        default=BASELINE,
        help=f"model the others are compared with, seed by seed (default: {BASELINE})",
    )
    p.add_argument("--out", type=Path, required=True)


def run(args: argparse.Namespace) -> int:
    from ops.malloc import tune_malloc
    from streaming.sources import load_log
    from trainer.comparison import compare_to_baseline, summarise
    from trainer.dataset import DatasetConfig, build_dataset
    from trainer.evaluation_report import comparison_table, markdown_table, write_report
    from trainer.offline import EvalConfig, run_evaluation
    from trainer.retrieval import load_truth

    tune_malloc()  # keep freed tensor buffers: a training step re-faults ~100 MB of them otherwise
    dataset_fields = field_values(args, DatasetConfig) | {"min_events": max(2, args.min_events)}
    dcfg = DatasetConfig(**dataset_fields)
    ecfg = EvalConfig(**field_values(args, EvalConfig))
    ds = build_dataset(load_log(args.data, args.format, min_ts=args.min_ts), dcfg)
    truth = load_truth(args.truth) if args.truth else None
    sizes = f"{len(ds.users)} users, {ds.n_items - 1} items, {ds.n_categories - 1} categories"
    counts = f"{len(ds.train)}/{len(ds.valid)}/{len(ds.test)}"
    print(f"{args.data}: {sizes}; samples train/valid/test {counts}")
    meta = {
        "data": str(args.data),
        "format": args.format,
        "dataset": sizes,
        "samples (train/valid/test)": counts,
        "dataset config": dcfg,
        "eval config": ecfg,
        "device": _device_name(args.device),
    }
    results = run_evaluation(
        ds, ecfg, truth, lambda rs: write_report(args.out, rs, meta, args.baseline)
    )
    paths = write_report(args.out, results, meta, args.baseline)
    print(markdown_table(summarise(results)))
    if args.baseline in ecfg.models:
        print(comparison_table(compare_to_baseline(results, args.baseline)), end="")
    else:
        print(f"no seed-paired comparison: --baseline {args.baseline} is not among --models")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _device_name(requested: str | None) -> str:
    import torch

    from trainer.loop import resolve_device

    device = resolve_device(requested)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads, torch {torch.__version__})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="twinstream evaluate", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
