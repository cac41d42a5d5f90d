"""Implementations of the CLI's sub-commands (argument wiring and the work they start)."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import orjson

from contracts.schema import InvalidEvent, parse_event
from contracts.settings import Settings
from ops import broker as broker_mod
from ops import broker_security
from ops.arguments import positive_int, positive_seconds
from ops.kafka_jars import BrokerError
from streaming.admin import ensure_topics
from streaming.outage import DEFAULT_BROKER_WAIT_S, BrokerAway, BrokerWait
from streaming.producer import RETRIABLE, DeliveryError, EventProducer
from streaming.replay import replay as replay_events
from streaming.sources import ColumnMapping, LogFormat, MovieLensOptions, read_events
from streaming.synthetic import GeneratorConfig
from streaming.synthetic import generate as generate_log

SHARED_SAMPLE = (
    Path(__file__).resolve().parents[1].parent / "shared/data/taobao_users/UserBehavior.csv"
)


class UserError(RuntimeError):
    """A problem the user can fix; printed without a traceback."""


def _settings() -> Settings:
    return Settings.from_env()


# --- broker -------------------------------------------------------------------------------------


def broker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["start", "stop", "status", "kill", "restart"])
    p.add_argument(
        "--brokers",
        type=positive_int,
        help="start: N nodes on 127.0.0.1, each broker and controller, topics replicated up to 3 "
        "ways (default 1); stop, status, kill, restart: the cluster found in TWINSTREAM_BROKER_DIR",
    )
    p.add_argument("--node", type=positive_int, help="kill (-9) or restart: this node of a cluster")
    p.add_argument(
        "--sasl-ssl",
        action="store_true",
        help="start: the single broker with a SASL_SSL client listener only; the settings "
        "clients need are written to TWINSTREAM_BROKER_DIR/client.env",
    )


def broker(args: argparse.Namespace) -> int:
    try:
        cfg = broker_mod.BrokerConfig.from_env(args.brokers or 1, args.sasl_ssl)
        if args.brokers is None:
            cfg = broker_mod.discover(cfg)
        if args.action == "start":
            pids = ", ".join(map(str, broker_mod.start(cfg)))
            logs = " ".join(str(node.log_file) for node in cfg.nodes)
            print(f"broker running (pid {pids}) on {cfg.bootstrap}; log {logs}")
            if cfg.sasl_ssl:
                env = broker_security.client_env_file(cfg.run_dir)
                print(f"SASL_SSL only; client settings: set -a; . {env}; set +a")
        elif args.action == "stop":
            print("broker stopped" if broker_mod.stop(cfg) else "no broker was running")
        elif args.action == "status":
            print(broker_mod.status(cfg))
        else:
            print(_kill_or_restart(cfg, args.action, args.node))
    except BrokerError as err:
        raise UserError(str(err)) from None
    return 0


def _kill_or_restart(cfg: broker_mod.BrokerConfig, action: str, node: int | None) -> str:
    if node is None:
        raise UserError(f"broker {action} needs --node N")
    if action == "kill":
        return f"node {node} killed (pid {broker_mod.kill_node(cfg, node)})"
    return f"node {node} running (pid {broker_mod.restart_node(cfg, node)})"


# --- topics -------------------------------------------------------------------------------------


def topics_args(p: argparse.ArgumentParser) -> None:
    pass


def topics(args: argparse.Namespace) -> int:
    settings = _settings()
    created = ensure_topics(settings)
    for name, n in settings.topics.all().items():
        print(f"{name}: {n} partitions{' (created)' if name in created else ''}")
    return 0


# --- publish ------------------------------------------------------------------------------------


def publish_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", default="-", help="JSON-lines file, or - for stdin")
    p.add_argument("--topic", help="target topic (default: the events topic)")
    _broker_wait_args(p)


def publish(args: argparse.Namespace) -> int:
    settings = _settings()
    stream = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    bad: Counter[str] = Counter()
    producer: EventProducer | None = None
    number = 0
    try:
        with stream, EventProducer(settings, _broker_wait(settings, args)) as producer:
            for number, line in enumerate(stream, start=1):
                if not line.strip():
                    continue
                try:
                    event = parse_event(line.rstrip(b"\r\n"), min_ts=settings.min_event_ts)
                except InvalidEvent as err:
                    bad[err.reason.value] += 1
                    print(f"line {number}: {err}", file=sys.stderr)
                    continue
                producer.send(event, args.topic)
            sent = producer.sent
    except (BrokerAway, DeliveryError) as err:
        acked, sent = (producer.acknowledged, producer.sent) if producer else (0, 0)
        read = f"input read to line {number:,}" if number else "input not read"
        counts = f"{acked:,} events acknowledged, {sent - acked:,} sent but not, {read}"
        rerun = (
            "rerun with the same input once the broker is back (the worker drops repeats of "
            "events that carry an event_id)"
        )
        raise _undelivered(err, counts, rerun) from None
    print(f"published {sent} events; rejected {sum(bad.values())} {dict(bad) or ''}".rstrip())
    return 1 if bad and not sent else 0


def _broker_wait_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--broker-wait-s",
        type=positive_seconds,
        default=DEFAULT_BROKER_WAIT_S,
        help="while the broker is unreachable, keep retrying this long, then fail "
        "(default %(default)g)",
    )


def _broker_wait(settings: Settings, args: argparse.Namespace) -> BrokerWait:
    return BrokerWait(settings.bootstrap_servers, args.broker_wait_s, limit_name="--broker-wait-s")


def _undelivered(err: BrokerAway | DeliveryError, counts: str, rerun: str) -> UserError:
    """One line: what went wrong, what was delivered, what to do."""
    if isinstance(err, DeliveryError):
        rerun = "not retried: the broker would refuse the same again"
    return UserError(f"{err}: {counts}; {rerun}")


# --- replay -------------------------------------------------------------------------------------


def replay_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="log file (or MovieLens folder)")
    p.add_argument("--format", required=True, choices=[f.value for f in LogFormat])
    p.add_argument("--map", default="", help="column mapping for csv/parquet: user_id=col,...")
    p.add_argument("--speed", type=float, help="N × real time (default: as fast as possible)")
    p.add_argument("--limit", type=int, help="send at most N events")
    p.add_argument("--topic", help="target topic (default: the events topic)")
    p.add_argument("--min-click-rating", type=float, default=4.0, help="MovieLens: click at ≥ this")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    _broker_wait_args(p)


def replay(args: argparse.Namespace) -> int:
    settings = _settings()
    if not Path(args.path).exists():
        raise UserError(f"{args.path} does not exist")
    events, report = read_events(
        args.path,
        args.format,
        mapping=ColumnMapping.parse(args.map) if args.map else None,
        movielens=MovieLensOptions(min_click_rating=args.min_click_rating),
        min_ts=settings.min_event_ts,
    )
    print(f"read {args.path}: {report.summary()}", file=sys.stderr)
    for example in report.examples[:5]:
        print(f"  line {example.line}: {example.reason}: {example.detail}", file=sys.stderr)
    total = len(events[: args.limit])
    wait = _broker_wait(settings, args)
    producer: EventProducer | None = None
    try:
        with EventProducer(settings, wait) as producer:
            wait.retry(lambda: ensure_topics(settings), RETRIABLE)
            stats = replay_events(
                events,
                producer,
                speed=args.speed,
                limit=args.limit,
                progress=args.progress,
                topic=args.topic,
            )
    except (BrokerAway, DeliveryError) as err:
        acked = producer.acknowledged if producer else 0
        counts = f"{acked:,} of {total:,} events acknowledged, {total - acked:,} not"
        rerun = (
            "rerun the same command once the broker is back (each event keeps its id, "
            f"{Path(args.path).stem}:LINE unless the log gives one, so the worker drops repeats)"
        )
        raise _undelivered(err, counts, rerun) from None
    print(f"replayed {stats.sent} events in {stats.seconds:.2f}s ({stats.rate:,.0f} events/s)")
    return 0


# --- generate -----------------------------------------------------------------------------------


def generate_args(p: argparse.ArgumentParser) -> None:
    d = GeneratorConfig()
    p.add_argument("out", help="output CSV path (Taobao format); truth goes to OUT.truth.jsonl")
    p.add_argument("--users", type=int, default=d.users)
    p.add_argument("--categories", type=int, default=d.categories)
    p.add_argument("--long-users", type=int, default=d.long_users)
    p.add_argument("--long-history", type=int, default=d.long_history)
    p.add_argument("--shift-at", type=float, help="fraction of time where all interests change")
    p.add_argument(
        "--return-prob",
        type=float,
        default=d.return_prob,
        help="chance a behaviour returns to a dormant interest (truth records kind 'return')",
    )
    p.add_argument(
        "--dormant-after",
        type=int,
        default=d.dormant_after,
        help="behaviours without a category before it counts as dormant",
    )
    p.add_argument("--seed", type=int, default=d.seed)


def generate(args: argparse.Namespace) -> int:
    cfg = GeneratorConfig(
        users=args.users,
        categories=args.categories,
        long_users=args.long_users,
        long_history=args.long_history,
        shift_at=args.shift_at,
        return_prob=args.return_prob,
        dormant_after=args.dormant_after,
        seed=args.seed,
    )
    start = time.perf_counter()
    log = generate_log(cfg)
    truth = log.write(args.out)
    took = time.perf_counter() - start
    returns = sum(1 for record in log.truth if record.get("kind") == "return")
    print(
        f"wrote {len(log.ts)} behaviours of {cfg.users + cfg.long_users} users to {args.out} "
        f"and {len(log.truth)} planted revisits ({returns} of them returns) to {truth} "
        f"in {took:.1f}s"
    )
    return 0


# --- worker -------------------------------------------------------------------------------------


def worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", help="local RocksDB state (default: TWINSTREAM_STATE_DIR)")
    p.add_argument(
        "--snapshot-dir", help="serve snapshots from here (default: TWINSTREAM_SNAPSHOT_DIR)"
    )
    p.add_argument("--http-port", type=int, help="serve POST /score on TWINSTREAM_HTTP_HOST:PORT")
    p.add_argument("--metrics-port", type=int, help="serve /metrics on 127.0.0.1:PORT")
    p.add_argument("--loglevel", default="warn", choices=["crit", "error", "warn", "info", "debug"])
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="run N worker processes (one per core); process i keeps its state in STATE_DIR/wI "
        "and serves HTTP and metrics on PORT+i",
    )


def worker(args: argparse.Namespace) -> int:
    if args.processes < 1:
        raise UserError("--processes must be at least 1")
    if args.processes > 1:
        from ops.supervisor import run_worker_processes

        return run_worker_processes(args, Path(args.state_dir or _settings().state_dir))
    return _worker_process(args)


def _worker_process(args: argparse.Namespace) -> int:
    from prometheus_client import start_http_server

    from ops.malloc import tune_malloc
    from serving.reload import SnapshotWatcher
    from streaming.worker import Worker, build_worker

    tune_malloc()
    settings = _settings()
    ensure_topics(settings)
    state_dir = Path(args.state_dir or settings.state_dir)
    app, scoring = build_worker(settings, state_dir, http_port=args.http_port)
    if args.metrics_port:
        start_http_server(args.metrics_port, addr="127.0.0.1")
    snapshots = Path(args.snapshot_dir or settings.snapshot_dir)
    watcher = SnapshotWatcher(settings, scoring.holder, scoring.metrics, snapshots)
    watcher.start()
    stopped = (watcher.stop, scoring.partitions.close_stores)
    Worker(app, loglevel=args.loglevel, on_stopped=stopped).execute_from_commandline()
    return 0


# --- score --------------------------------------------------------------------------------------


def score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("user", help="user id")
    p.add_argument("items", nargs="+", help="candidate item ids")
    p.add_argument("--explain", action="store_true", help="show the most attended behaviours")
    p.add_argument("--timeout", type=float, default=10.0)


def score(args: argparse.Namespace) -> int:
    from streaming.client import ScoreClient

    with ScoreClient(_settings()) as client:
        try:
            answer = client.score(args.user, args.items, explain=args.explain, timeout=args.timeout)
        except TimeoutError as err:
            raise UserError(f"{err}: is a worker running (twinstream worker)?") from None
    print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
    return 1 if "error" in answer else 0


# --- demo (the main job) ------------------------------------------------------------------------


def demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", help="a Taobao-format log (default: ../shared/data sample, else generated)"
    )
    p.add_argument("--limit", type=int, help="replay at most N events")
    p.add_argument("--out", default="twinstream-out/demo", help="logs, state and snapshots")


def demo(args: argparse.Namespace) -> int:
    from ops.demo import run_demo

    return run_demo(_demo_data(args.data), Path(args.out), args.limit)


def _demo_data(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    if SHARED_SAMPLE.exists():
        return SHARED_SAMPLE
    out = Path("twinstream-out/generated/UserBehavior.csv")
    if not out.exists():
        print("../shared/data is absent: generating a synthetic log", file=sys.stderr)
        generate_log(GeneratorConfig(users=150, long_users=1, long_history=5_000)).write(out)
    return out
