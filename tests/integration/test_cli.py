"""The console script end to end: help lists every command; publish reports bad lines."""

from __future__ import annotations

import subprocess

import orjson
import pytest

from contracts.settings import Settings
from ops.cli import COMMANDS
from streaming.admin import ensure_topics, read_topic
from tests.support.processes import TWINSTREAM


def run_cli(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*TWINSTREAM, *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=120,
    )


def test_help_lists_every_command_with_a_description() -> None:
    out = run_cli("--help").stdout.decode()
    for name, description, *_ in COMMANDS:
        assert name in out and description.split()[0] in out


@pytest.mark.integration
def test_publish_from_stdin_sends_valid_lines_and_reports_bad_ones(settings: Settings) -> None:
    ensure_topics(settings)
    lines = [
        orjson.dumps({"user_id": "a", "item_id": 1, "type": "click", "ts": 1511658000}),
        b"{broken",
        orjson.dumps({"user_id": "b", "item_id": 2, "type": "teleport", "ts": 1511658000}),
        orjson.dumps({"user_id": "b", "item_id": 3, "type": "buy", "ts": "2017-11-26T01:00:00Z"}),
    ]
    env = {
        "PATH": "/usr/bin:/bin",
        "TWINSTREAM_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "TWINSTREAM_TOPIC_PREFIX": settings.topics.prefix,
    }
    done = run_cli("publish", stdin=b"\n".join(lines), env=env)
    assert done.returncode == 0, done.stderr
    assert b"published 2 events; rejected 2" in done.stdout
    assert b"line 2: bad_json" in done.stderr and b"line 3: unknown_type" in done.stderr
    records = read_topic(settings, settings.topics.events, expected=2)
    assert sorted(r.key for r in records) == [b"a", b"b"]
