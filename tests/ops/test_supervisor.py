"""``twinstream worker --processes N``: when one process exits on its own (a fail-stop), the
command stops the others, names the process on stderr and exits with its status."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

import pytest

from ops import supervisor
from streaming.failstop import EXIT_STATUS as FAIL_STOP_STATUS


def test_one_failing_process_stops_the_rest_and_gives_its_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(signal, "signal", lambda signum, handler: None)  # pytest keeps its own
    commands = [
        [sys.executable, "-c", "import time; time.sleep(60)"],
        [sys.executable, "-c", f"import sys, time; time.sleep(0.5); sys.exit({FAIL_STOP_STATUS})"],
    ]
    monkeypatch.setattr(supervisor, "child_command", lambda args, state_dir, i: commands[i])
    started = time.monotonic()
    status = supervisor.run_worker_processes(argparse.Namespace(processes=2), tmp_path)
    assert status == FAIL_STOP_STATUS and time.monotonic() - started < 30
    err = capsys.readouterr().err
    assert "process 1 " in err and f"exited with status {FAIL_STOP_STATUS}; stopping the" in err
