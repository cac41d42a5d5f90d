"""glibc allocator settings for serving processes.

By default glibc returns freed blocks over 128 KiB to the kernel at once and re-faults them on the
next request; with tensors of a few MB per score and a whole model freed at each hot reload, that
churn shows up as tail latency (on the public DARE reference, raising these thresholds cut its
scoring p50/p99 from 30/67 ms to 14/18 ms). Raising the mmap and trim thresholds keeps that memory
in the process. A no-op off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 * 1024 * 1024
TRIM_THRESHOLD = 1024 * 1024 * 1024


def tune_malloc() -> bool:
    """Apply the thresholds; True when glibc accepted them."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok_mmap = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok_trim = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return ok_mmap and ok_trim
