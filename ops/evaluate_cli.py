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

from ops.arguments import positive_int

HELP = "Train and compare models offline (DARE protocol): AUC, GAUC, logloss over seeds"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from models import MODEL_NAMES

    p.add_argument("--data", type=Path, required=True, help="log file (movielens: its folder)")
    p.add_argument(
        "--format", required=True, choices=["taobao", "movielens", "jsonl", "csv", "parquet"]
    )
    p.add_argument("--models", default=",".join(MODEL_NAMES), help="comma-separated model names")
    p.add_argument("--seeds", type=positive_int, default=5)
    p.add_argument("--epochs", type=positive_int, default=3)
    p.add_argument("--patience", type=positive_int, default=1, help="epochs without valid gain")
    p.add_argument("--dim", type=positive_int, default=64)
    p.add_argument("--topk", type=positive_int, default=20)
    p.add_argument("--seq-len", type=positive_int, default=200)
    p.add_argument("--batch-size", type=positive_int, default=2048)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument(
        "--encoder-lr", type=float, default=0.001, help="sequence encoders (BST, DSIN, DIEN)"
    )
    p.add_argument("--negatives", type=int, default=2)
    p.add_argument("--min-events", type=positive_int, default=3, help="drop shorter users")
    p.add_argument("--train-stride", type=positive_int, default=1, help="DARE: 5")
    p.add_argument("--max-train-targets", type=positive_int, default=None, help="DARE: 19")
    p.add_argument("--behaviour-types", default="click", help="comma-separated event types")
    p.add_argument("--max-batches", type=positive_int, default=None, help="per epoch (smoke runs)")
    p.add_argument("--truth", type=Path, default=None, help="planted ground truth (JSON lines)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if present)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the negative sampling")
    p.add_argument(
        "--min-ts",
        type=float,
        default=0.0,
        help="oldest event time kept (s); historical logs such as MovieLens start in 1996",
    )
    p.add_argument(
        "--baseline", default="mean", help="model the others are compared with, seed by seed"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--out", type=Path, required=True)


def run(args: argparse.Namespace) -> int:
    from ops.malloc import tune_malloc
    from streaming.sources import load_log
    from trainer.dataset import DatasetConfig, build_dataset
    from trainer.offline import (
        EvalConfig,
        compare_to_baseline,
        comparison_table,
        markdown_table,
        run_evaluation,
        summarise,
        write_report,
    )
    from trainer.retrieval import load_truth

    tune_malloc()  # keep freed tensor buffers: a training step re-faults ~100 MB of them otherwise
    names = tuple(m.strip() for m in args.models.split(",") if m.strip())
    dcfg = DatasetConfig(
        seq_len=args.seq_len,
        negatives=args.negatives,
        behaviour_types=tuple(t.strip() for t in args.behaviour_types.split(",")),
        min_events=max(2, args.min_events),
        train_stride=args.train_stride,
        max_train_targets=args.max_train_targets,
        seed=args.data_seed,
    )
    ecfg = EvalConfig(
        models=names,
        seeds=args.seeds,
        epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        dim=args.dim,
        topk=args.topk,
        lr=args.lr,
        encoder_lr=args.encoder_lr,
        device=args.device,
        max_batches=args.max_batches,
        progress=args.progress,
    )
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
    if args.baseline in names:
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
