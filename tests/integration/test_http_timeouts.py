"""A real worker's HTTP port closes the connections of clients that hold them without finishing
a request (issue: 350 idle or half-sent connections were still open after 80 s, each holding a
descriptor): idle ones and half-sent heads after ``TWINSTREAM_HTTP_IDLE_TIMEOUT_S``, half-sent
bodies after ``TWINSTREAM_HTTP_BODY_TIMEOUT_S`` with a 408; the descriptors the worker held for
them are all closed."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request
from pathlib import Path

import pytest

from contracts.settings import Settings
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]
IDLE_S, BODY_S = 2.0, 1.0
HTTP_PORT = 28_751
EACH = 120  # connections of each kind
SLACK_S = 1.5
HALF_HEAD = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Le"
HALF_BODY = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b'{"user_id'


async def held(sent: bytes) -> tuple[bytes, float, float]:
    """Open a connection, send ``sent`` and hold it: what the worker answered before closing
    it, and how long after the connection was asked for and after it was made (a connect can
    wait for a full accept queue)."""
    asked = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", HTTP_PORT)
    made = time.monotonic()
    writer.write(sent)
    await writer.drain()
    received = await asyncio.wait_for(reader.read(), timeout=IDLE_S + 10 * SLACK_S)
    closed = time.monotonic()
    writer.close()
    return received, closed - asked, closed - made


def http_descriptors(pid: int) -> int:
    """The descriptors process ``pid`` holds for connections to ``HTTP_PORT`` (not listening)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            port, state, inode = int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[9]
            if port == HTTP_PORT and state != "0A":  # 0A: LISTEN
                inodes.add(f"socket:[{inode}]")
    held = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            held += os.readlink(f"/proc/{pid}/fd/{fd}") in inodes
        except FileNotFoundError:  # closed meanwhile
            continue
    return held


def healthz_ok() -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/healthz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


async def test_idle_and_half_sent_connections_are_closed_within_their_timeouts(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWINSTREAM_HTTP_IDLE_TIMEOUT_S", str(IDLE_S))
    monkeypatch.setenv("TWINSTREAM_HTTP_BODY_TIMEOUT_S", str(BODY_S))
    with WorkerProcess(
        settings, tmp_path / "w", tmp_path / "w.log", "--http-port", str(HTTP_PORT)
    ) as w:
        wait_until(healthz_ok, timeout_s=120, what="the worker's /healthz", process=w.proc)
        wait_until(  # /healthz's connection: the worker closes its side a moment after ours
            lambda: http_descriptors(w.proc.pid) == 0,
            timeout_s=10,
            what="the worker to close the /healthz connection",
        )
        kinds = [b""] * EACH + [HALF_HEAD] * EACH + [HALF_BODY] * EACH
        tasks = [asyncio.create_task(held(sent)) for sent in kinds]
        during = 0
        for _ in range(18):  # the most held at once while the first ones are still open
            await asyncio.sleep(0.05)
            during = max(during, http_descriptors(w.proc.pid))
        results = await asyncio.gather(*tasks)
        after = http_descriptors(w.proc.pid)
        assert healthz_ok()
    idle, head, body = results[:EACH], results[EACH : 2 * EACH], results[2 * EACH :]
    assert after == 0 and during >= EACH  # held by the worker, then all closed
    for received, since_asked, since_made in idle + head:
        assert received == b"" and since_asked >= IDLE_S and since_made <= IDLE_S + SLACK_S
    for received, since_asked, since_made in body:
        assert received.startswith(b"HTTP/1.1 408 ")
        assert since_asked >= BODY_S and since_made <= BODY_S + SLACK_S
