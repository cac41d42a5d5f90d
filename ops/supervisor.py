"""``twinstream worker --processes N``: N Faust worker processes under one command.

Python runs one core per process, so a machine with several cores runs one worker per core (as
Faust recommends). They join the same consumer group and share the partitions of ``events``
exactly as workers on different machines do, handing state over through the changelog. Process
``i`` keeps its RocksDB state in ``STATE_DIR/w{i}`` and serves HTTP and metrics on the given
ports plus ``i``. SIGTERM or SIGINT stops them all; when one exits on its own, the others are
stopped and the command exits with its status (1 if that was 0; 128 + N for signal N), so a
process manager restarts the whole set. A worker that fail-stopped exits with
``streaming.failstop.EXIT_STATUS`` (74), and so does the command; stderr names the process.
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
            for index, child in enumerate(children):
                if child.poll() is not None:
                    _say_exited(index, child, "stopping the others")
                    return exit_status(child.returncode) or 1
            time.sleep(0.5)
    finally:
        _stop_all(children)
    for index, child in enumerate(children):  # stopped on a signal: did each stop cleanly?
        if child.returncode:
            _say_exited(index, child, "while stopping")
            return exit_status(child.returncode)
    return 0


def exit_status(returncode: int) -> int:
    """The shell's exit status of a child: its code, or 128 + N when signal N ended it.

    >>> exit_status(74), exit_status(-9), exit_status(0)
    (74, 137, 0)
    """
    return 128 - returncode if returncode < 0 else returncode


def _say_exited(index: int, child: subprocess.Popen[bytes], then: str) -> None:
    status = exit_status(child.returncode)
    print(
        f"twinstream worker: process {index} (pid {child.pid}) exited with status {status}; {then}",
        file=sys.stderr,
        flush=True,
    )


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
