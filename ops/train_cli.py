"""``twinstream train``: the online trainer (``samples`` → snapshots + ``model-updates``).

    twinstream train --model dare --snapshot-dir snapshots --batch-size 512 \\
        --snapshot-every-steps 50 --snapshot-every-s 30 --dim 32

Kafka comes from the environment (``contracts.settings.Settings``: bootstrap servers, topic
prefix). Runs until SIGTERM / Ctrl-C (then writes a final snapshot), or ``--max-steps`` steps, or
``--idle-timeout-s`` seconds without data. ``--metrics-port 9812`` serves Prometheus ``/metrics``
on 127.0.0.1 (:mod:`trainer.telemetry`; each torchrun rank on PORT + RANK). Data parallel over
the partitions of ``samples``::

    torchrun --nproc_per_node 2 -m ops.train_cli --model dare --snapshot-dir snapshots ...
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ops.arguments import positive_int, positive_seconds

if TYPE_CHECKING:
    from trainer.online import TrainerConfig
    from trainer.telemetry import TrainerTelemetry

HELP = "Train a model online from the samples topic; write and announce snapshots"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from models import MODEL_NAMES

    p.add_argument("--model", choices=MODEL_NAMES, default="dare")
    p.add_argument("--snapshot-dir", type=Path, required=True)
    p.add_argument("--batch-size", type=positive_int, default=512, help="sample messages per step")
    p.add_argument("--snapshot-every-steps", type=positive_int, default=50)
    p.add_argument("--snapshot-every-s", type=positive_seconds, default=30.0)
    p.add_argument("--keep", type=positive_int, default=5, help="newest snapshots kept")
    model = p.add_argument_group("model")
    model.add_argument("--dim", type=positive_int, default=32, help="embedding width (DARE's d_R)")
    model.add_argument(
        "--attn-dim", type=positive_int, default=None, help="DARE's d_A (default dim)"
    )
    model.add_argument("--seq-len", type=positive_int, default=200)
    model.add_argument("--topk", type=positive_int, default=20)
    model.add_argument("--dense-features", type=int, default=0, help="must match the samples")
    model.add_argument(
        "--item-capacity", type=positive_int, default=1 << 20, help="item rows (id-map capacity)"
    )
    model.add_argument("--category-capacity", type=positive_int, default=1 << 14)
    model.add_argument("--max-clusters", type=positive_int, default=None)
    model.add_argument("--min-count", type=positive_int, default=1, help="sightings before a row")
    model.add_argument("--ttl", type=positive_int, default=None, help="id expiry (steps)")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--lr", type=float, default=0.01)
    opt.add_argument(
        "--encoder-lr", type=float, default=0.001, help="sequence encoders (BST, DSIN, DIEN)"
    )
    opt.add_argument("--l2", type=float, default=1e-6)
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda")
    run = p.add_argument_group("run")
    run.add_argument("--metrics-window", type=positive_int, default=10_000, help="rows")
    run.add_argument("--max-wait-s", type=positive_seconds, default=0.5, help="to fill a batch")
    run.add_argument("--log-every-s", type=positive_seconds, default=10.0)
    run.add_argument("--max-steps", type=positive_int, default=None)
    run.add_argument("--idle-timeout-s", type=positive_seconds, default=None)
    run.add_argument("--audit-log", type=Path, default=None, help="offsets trained per step")
    run.add_argument(
        "--metrics-port",
        type=positive_int,
        default=None,
        help="serve Prometheus /metrics on 127.0.0.1:PORT (PORT + RANK under torchrun)",
    )
    run.add_argument("--group-id", default=None, help="default: {prefix}trainer")
    run.add_argument(
        "--session-timeout-s",
        type=positive_seconds,
        default=10.0,
        help="consumer-group session: how soon a killed trainer's partitions move",
    )
    run.add_argument(
        "--no-optimizer-state",
        dest="save_optimizer",
        action="store_false",
        help="leave optimizer moments out of snapshots (smaller; resume restarts Adam)",
    )


def trainer_config(args: argparse.Namespace) -> TrainerConfig:
    """The :class:`trainer.online.TrainerConfig` the arguments describe."""
    from models import ModelConfig
    from trainer.online import TrainerConfig

    model_config = ModelConfig(
        n_items=args.item_capacity,
        n_categories=args.category_capacity,
        dim=args.dim,
        attn_dim=args.attn_dim,
        dense_features=args.dense_features,
        seq_len=args.seq_len,
        topk=args.topk,
    )
    return TrainerConfig(
        model_config=model_config,
        snapshot_dir=args.snapshot_dir,
        model=args.model,
        batch_size=args.batch_size,
        snapshot_every_steps=args.snapshot_every_steps,
        snapshot_every_s=args.snapshot_every_s,
        keep=args.keep,
        metrics_window=args.metrics_window,
        device=args.device,
        lr=args.lr,
        encoder_lr=args.encoder_lr,
        l2=args.l2,
        min_count=args.min_count,
        ttl=args.ttl,
        max_clusters=args.max_clusters,
        max_wait_s=args.max_wait_s,
        log_every_s=args.log_every_s,
        save_optimizer=args.save_optimizer,
        audit_log=args.audit_log,
        group_id=args.group_id,
        session_timeout_s=args.session_timeout_s,
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    from contracts.settings import Settings
    from ops.malloc import tune_malloc
    from trainer.online import OnlineTrainer

    tune_malloc()  # keep freed tensor buffers: a training step re-faults ~100 MB of them otherwise
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s rank {rank} %(name)s %(levelname)s %(message)s",
    )
    trainer = OnlineTrainer(Settings.from_env(), trainer_config(args), telemetry=_telemetry(args))
    try:
        report = trainer.run(max_steps=args.max_steps, idle_timeout_s=args.idle_timeout_s)
    finally:
        trainer.comm.close()
    last = trainer.last_snapshot
    print(
        f"rank {rank}: {report.steps} steps, {report.rows} rows, {report.rows_per_s:.0f} rows/s, "
        f"stopped by {report.stopped_by}; last snapshot {last.path if last else 'none'}"
    )
    if trainer.comm.world_size > 1:
        _exit_now(0)
    return 0


def _telemetry(args: argparse.Namespace) -> TrainerTelemetry | None:
    """The trainer's metrics on the default registry, served on ``--metrics-port`` (+ rank)."""
    if args.metrics_port is None:
        return None
    from prometheus_client import REGISTRY, start_http_server

    from trainer.telemetry import TrainerTelemetry

    start_http_server(args.metrics_port + int(os.environ.get("RANK", "0")), addr="127.0.0.1")
    return TrainerTelemetry.create(REGISTRY)


def _exit_now(code: int) -> None:
    """Leave a torchrun worker without interpreter finalisation. With torch 2.15 and gloo about
    1 exit in 10 aborts in a C++ destructor after ``destroy_process_group`` ("terminate called
    without an active exception", SIGABRT), which torchrun reports as a failed run although
    every snapshot is written; 0 in 24 with ``os._exit`` (measured on this machine)."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="twinstream train", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
