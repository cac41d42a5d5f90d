"""Waiting for something to happen on the broker, in a worker or in Prometheus: one harness.

``wait_until`` polls a check until it returns a true value and returns that value; past the
deadline it raises a ``TimeoutError`` that names what was awaited (and, given ``detail``, what
the last check saw). Given a ``process``, it fails at once when that process exits first.

>>> wait_until(lambda: 42, timeout_s=1.0, what="the answer")
42
>>> wait_until(lambda: [], timeout_s=0.05, what="a non-empty list", interval_s=0.01)
Traceback (most recent call last):
...
TimeoutError: timed out after 0.05 s waiting for a non-empty list
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    check: Callable[[], T | None],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = 0.5,
    process: subprocess.Popen[bytes] | None = None,
    detail: Callable[[], object] | None = None,
) -> T:
    """The first true value of ``check()``, polled every ``interval_s`` for ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process exited ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            seen = f" (last seen: {detail()})" if detail is not None else ""
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}{seen}")
        time.sleep(interval_s)


async def eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """The event loop's twin of :func:`wait_until`, for tests inside one loop (Faust's
    ``test_context``): polls ``condition`` every 20 ms without blocking the loop."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
