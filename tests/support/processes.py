"""``twinstream`` commands run as real processes by the integration tests: the repository they run
in, the command line, a process left running with its output in a file, a command run to its
end, the last lines of a log for an assertion's message, and the environment that gives a child
process a deployment's settings.

>>> TWINSTREAM[1:]
('-m', 'ops.cli')
>>> (REPO / "ops" / "cli.py").is_file()
True
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from contracts.settings import Settings

REPO = Path(__file__).resolve().parents[2]
TWINSTREAM = (sys.executable, "-m", "ops.cli")  # the console script, in this interpreter


def spawn(log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``twinstream ARGS`` in a process of its own, in the test's environment; its output and
    errors go to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [*TWINSTREAM, *args],
            cwd=REPO,
            env=dict(os.environ),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def twinstream(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """``twinstream ARGS`` to its end, in the test's environment (or ``env``)."""
    return subprocess.run(
        [*TWINSTREAM, *args], cwd=REPO, env=env or dict(os.environ), capture_output=True,
        text=True, timeout=timeout_s,
    )  # fmt: skip


def tail(path: Path) -> str:
    """The end of a process's log, for an assertion's message."""
    return path.read_text(errors="replace")[-3000:]


def deployment_env(settings: Settings) -> dict[str, str]:
    """The test's environment with ``settings``' broker, topics and TLS/SASL settings, for a
    process of the same deployment (its output unbuffered, so a log shows it as it happens)."""
    env = dict(os.environ)
    env.update(
        TWINSTREAM_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
        TWINSTREAM_TOPIC_PREFIX=settings.topics.prefix,
        TWINSTREAM_EVENTS_PARTITIONS=str(settings.topics.events_partitions),
        PYTHONUNBUFFERED="1",
    )
    env.update(settings.security.environment())  # TLS and SASL, as the tests' own clients
    return env
