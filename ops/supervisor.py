"""``twinstream worker --processes N``: N Faust worker processes under one command.

Python runs one core per process, so a machine with several cores runs one worker per core (as
Faust recommends). They join the same consumer group and share the partitions of ``events``
exactly as workers on different machines do, handing state over through the changelog. Process
``i`` keeps its RocksDB state in ``STATE_DIR/w{i}`` and serves HTTP and metrics on the given
ports plus ``i``. SIGTERM or SIGINT stops them all; when one exits on its own, the others are
stopped and the command exits with its code (1 if that was 0), so a process manager restarts
the whole set.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

STOP_TIMEOUT_S = 60.0


def child_command(args: argparse.Namespace, state_dir: Path, index: int) -> list[str]:
    """The ``twinstream worker`` command line of process ``index``."""
    cmd = [sys.executable, "-m", "ops.cli", "worker", "--state-dir", str(state_dir / f"w{index}")]
    cmd += ["--loglevel", args.loglevel]
    if args.snapshot_dir:
        cmd += ["--snapshot-dir", args.snapshot_dir]
    if args.http_port:
        cmd += ["--http-port", str(args.http_port + index)]
    if args.metrics_port:
        cmd += ["--metrics-port", str(args.metrics_port + index)]
    return cmd


def run_worker_processes(args: argparse.Namespace, state_dir: Path) -> int:
    children = [subprocess.Popen(child_command(args, state_dir, i)) for i in range(args.processes)]
    stopping: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping:
            exited = [c for c in children if c.poll() is not None]
            if exited:
                code = exited[0].returncode
                print(f"worker process {exited[0].pid} exited ({code}); stopping the others")
                return code if code else 1
            time.sleep(0.5)
        return 0
    finally:
        _stop_all(children)


def _stop_all(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
