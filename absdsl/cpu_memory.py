"""Keep freed CPU memory in the process, so bound programs do not page-fault on every call.

A bound program allocates many short-lived tensors of 0.1-100 MiB per call. glibc's malloc
serves blocks above its mmap threshold with fresh ``mmap`` pages and gives freed memory at
the top of the heap back to the kernel above its trim threshold; every call then touches
new pages, and the page faults cost more than the arithmetic (CNN3 Box at batch 128: 6.6 ms
per call with the defaults, 2.0 ms with the thresholds below, on the same machine).

:func:`keep_freed_memory` raises both thresholds with ``mallopt``. It is a process-wide
setting, so ``import absdsl`` does not make it: the ``absdsl`` command and ``run_training``
call :func:`apply_default` when they start, and a program of your own opts in by calling it
(once per process; ``ABSDSL_KEEP_FREED_MEMORY=0`` switches it off). It does nothing where the C
library has no ``mallopt`` (macOS, Windows, musl). The cost is memory: up to the trim
threshold of freed heap stays with the process instead of returning to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 * 2**20
TRIM_THRESHOLD_BYTES = 1024 * 2**20
ENV_SWITCH = "ABSDSL_KEEP_FREED_MEMORY"

_applied: bool | None = None


def keep_freed_memory(mmap_threshold: int = MMAP_THRESHOLD_BYTES,
                      trim_threshold: int = TRIM_THRESHOLD_BYTES) -> bool:
    """Raise glibc's mmap and trim thresholds; True when both were accepted."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok_mmap = mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
    ok_trim = mallopt(M_TRIM_THRESHOLD, int(trim_threshold)) == 1
    return ok_mmap and ok_trim


def apply_default() -> bool | None:
    """What the command line and training run at start: once per process, unless switched off
    by the environment."""
    global _applied
    if _applied is None:
        _applied = (False if os.environ.get(ENV_SWITCH, "1").strip() in ("0", "false", "no")
                    else keep_freed_memory())
    return _applied
