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
from typing import TYPE_CHECKING

from ops.arguments import Flag, add_fields, field_values, positive_int, positive_seconds

if TYPE_CHECKING:
    from trainer.config import TrainerConfig
    from trainer.telemetry import TrainerTelemetry

HELP = "Train a model online from the samples topic; write and announce snapshots"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options: one per field of :class:`trainer.config.TrainerConfig` and of the model's
    sizes (:class:`models.ModelConfig`), with their defaults, plus how long to run."""
    from models import MODEL_NAMES, ModelConfig
    from trainer.config import ONLINE_MODEL_SIZES, TrainerConfig

    add_fields(p, TrainerConfig, {
        "model": Flag(choices=MODEL_NAMES),
        "snapshot_dir": Flag(),
        "batch_size": Flag("sample messages per step", positive_int),
        "snapshot_every_steps": Flag(type=positive_int),
        "snapshot_every_s": Flag(type=positive_seconds),
        "delta_every_s": Flag("deltas of the touched rows on model-updates", positive_seconds),
        "keep": Flag("newest snapshots kept", positive_int),
    })  # fmt: skip
    model = p.add_argument_group("model")
    add_fields(model, ModelConfig, {
        "dim": Flag("embedding width (DARE's d_R)", positive_int),
        "attn_dim": Flag("DARE's d_A (default dim)", positive_int),
        "seq_len": Flag(type=positive_int),
        "topk": Flag(type=positive_int),
        "dense_features": Flag("must match the samples"),
        "n_items": Flag("item rows (id-map capacity)", positive_int, "--item-capacity"),
        "n_categories": Flag("category rows", positive_int, "--category-capacity"),
    }, defaults=ONLINE_MODEL_SIZES)  # fmt: skip
    add_fields(model, TrainerConfig, {
        "max_clusters": Flag(type=positive_int),
        "min_count": Flag("sightings before a row", positive_int),
        "ttl": Flag("id expiry (steps)", positive_int),
    })  # fmt: skip
    add_fields(p.add_argument_group("optimisation"), TrainerConfig, {
        "lr": Flag(),
        "encoder_lr": Flag("sequence encoders (BST, DSIN, DIEN)"),
        "l2": Flag(),
        "seed": Flag(),
        "device": Flag("auto (CUDA if present), cpu, cuda"),
    })  # fmt: skip
    run = p.add_argument_group("run")
    add_fields(run, TrainerConfig, {
        "metrics_window": Flag("rows", positive_int),
        "max_wait_s": Flag("to fill a batch", positive_seconds),
        "log_every_s": Flag(type=positive_seconds),
        "audit_log": Flag("offsets trained per step"),
        "group_id": Flag("default: {prefix}trainer"),
        "session_timeout_s": Flag(
            "consumer-group session: how soon a killed trainer's partitions move",
            positive_seconds,
        ),
        "save_optimizer": Flag(
            "leave optimizer moments out of snapshots (smaller; resume restarts Adam)",
            name="--no-optimizer-state",
        ),
    })  # fmt: skip
    run.add_argument("--max-steps", type=positive_int, default=None)
    run.add_argument("--idle-timeout-s", type=positive_seconds, default=None)
    run.add_argument(
        "--metrics-port",
        type=positive_int,
        default=None,
        help="serve Prometheus /metrics on 127.0.0.1:PORT (PORT + RANK under torchrun)",
    )


def trainer_config(args: argparse.Namespace) -> TrainerConfig:
    """The :class:`trainer.config.TrainerConfig` the arguments describe."""
    from models import ModelConfig
    from trainer.config import TrainerConfig

    model_config = ModelConfig(**field_values(args, ModelConfig))
    return TrainerConfig(model_config=model_config, **field_values(args, TrainerConfig))


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
