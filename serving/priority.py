"""Thread priorities of the scorer's background work.

The scorer's watcher thread runs nicer than the rest of the worker (niceness 10:
:func:`lower_thread_priority`), so that loading a snapshot yields the CPU to requests. While it
holds the scorer's lock, or copies a model that deltas wait for, it must not be descheduled behind
busier threads: :func:`full_priority` lifts it for that block.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

LOADER_NICENESS = 10


def lower_thread_priority(niceness: int = LOADER_NICENESS) -> bool:
    """Make the calling thread yield the CPU to the scoring threads (Linux sets the niceness
    of one thread by its native id); False where the platform cannot.

    A reload hashes and copies tens of MiB; at normal priority it takes a core from requests
    on a small machine, at a higher niceness it runs in the time they leave.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):
        return False
    return True


@contextmanager
def full_priority() -> Iterator[None]:
    """The calling thread at its process's priority within the block. Where the platform does
    not let a thread raise its priority again, nothing changes."""
    tid = threading.get_native_id()
    try:
        before = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, os.getpid()))
    except (AttributeError, OSError):
        yield
        return
    try:
        yield
    finally:
        with suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, before)
