"""A worker stopped with SIGTERM exits 0, every time: its snapshot watcher's thread is joined and
its RocksDB stores closed once the app has stopped, before the interpreter's teardown (which,
with the stores still open, ended a stopped worker with SIGSEGV now and then)."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.settings import Settings
from streaming.producer import EventProducer
from streaming.replay import replay
from tests.support.events import synthetic_events
from tests.support.waiting import wait_until
from tests.support.worker_http import healthz
from tests.support.workers import WorkerProcess, wait_caught_up

pytestmark = [pytest.mark.integration, pytest.mark.slow]
STOPS = 3
HTTP_PORT = 28_891


def owns_partitions() -> bool:
    """Whether the worker answers /healthz with partitions (its signal handlers are set by then)."""
    try:
        return bool(healthz(HTTP_PORT).get("partitions"))
    except OSError:  # not listening yet
        return False


def test_a_worker_stopped_with_sigterm_exits_0_each_time(
    settings: Settings, tmp_path: Path
) -> None:
    events = synthetic_events(users=20)
    with EventProducer(settings) as producer:
        replay(events, producer, progress=False)
    codes = []
    for run in range(STOPS):  # the same state folder: each start reopens the stores
        log = tmp_path / f"worker-{run}.log"
        args = ("--snapshot-dir", str(tmp_path / "snaps"), "--http-port", str(HTTP_PORT))
        with WorkerProcess(settings, tmp_path / "state", log, *args) as worker:
            wait_until(
                owns_partitions,
                timeout_s=60,
                what="the worker to own its partitions",
                process=worker.proc,
            )
            states = wait_caught_up(settings)
            assert sum(len(s.log) for s in states.values()) > 0
        codes.append(worker.proc.returncode)
        assert worker.proc.returncode == 0, log.read_text(errors="replace")[-3000:]
    assert codes == [0] * STOPS
