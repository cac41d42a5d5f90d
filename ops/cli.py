"""The ``twinstream`` command line: one entry point, one sub-command per job."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from contracts.settings import Settings
from ops import commands, drift_cli, evaluate_cli, report_cli, train_cli
from ops.kafka_login import login_refused

Command = tuple[
    str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]
]

COMMANDS: list[Command] = [
    (
        "demo",
        "Run the main job: broker, topics, replay a sample log, show what went through",
        commands.demo_args,
        commands.demo,
    ),
    (
        "broker",
        "Start, stop or inspect the local Apache Kafka broker (no Docker needed)",
        commands.broker_args,
        commands.broker,
    ),
    (
        "topics",
        "Create the deployment's Kafka topics with their partition counts",
        commands.topics_args,
        commands.topics,
    ),
    (
        "publish",
        "Publish JSON-lines events from a file or stdin (bad lines are reported)",
        commands.publish_args,
        commands.publish,
    ),
    (
        "replay",
        "Replay a historical log (taobao, movielens, jsonl, csv, parquet) in event-time order",
        commands.replay_args,
        commands.replay,
    ),
    (
        "worker",
        "Run a Faust ingest worker: validate, sessionize, keep state, emit samples",
        commands.worker_args,
        commands.worker,
    ),
    (
        "train",
        train_cli.HELP,
        train_cli.add_arguments,
        train_cli.run,
    ),
    (
        "score",
        "Score candidate items for a user through the workers (Kafka), with explanations",
        commands.score_args,
        commands.score,
    ),
    (
        "evaluate",
        evaluate_cli.HELP,
        evaluate_cli.add_arguments,
        evaluate_cli.run,
    ),
    (
        "generate",
        "Write a synthetic Taobao-format log with drifting interests and planted truth",
        commands.generate_args,
        commands.generate,
    ),
    (
        "report",
        report_cli.HELP,
        report_cli.add_arguments,
        report_cli.run,
    ),
    ("drift-ack", drift_cli.HELP, drift_cli.add_arguments, drift_cli.run),
]


# these talk to Kafka: a login the broker refuses stops them at once (ops.kafka_login)
KAFKA_COMMANDS = frozenset({"topics", "publish", "replay", "worker", "train", "score"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twinstream",
        description="Online CTR learning over long user behaviour sequences, from Kafka.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, add_args, run in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in KAFKA_COMMANDS:
            _check_login()
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130
    except commands.UserError as err:
        print(f"twinstream {args.command}: {err}", file=sys.stderr)
        return 2


def _check_login() -> None:
    try:
        settings = Settings.from_env()
    except ValueError as err:  # incomplete security settings: the message names the variable
        raise commands.UserError(str(err)) from None
    refused = login_refused(settings)
    if refused is not None:
        raise commands.UserError(refused)


if __name__ == "__main__":
    sys.exit(main())
