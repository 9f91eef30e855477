"""Keep freed CPU memory inside the process, so each training step does not fault its pages in again.

PyTorch allocates CPU tensors with the C library's ``malloc`` and has no caching allocator on CPU. glibc's
``malloc`` gives large blocks back to the kernel when they are freed (``munmap``, or trimming the top of
the heap), so the next step's tensors of the same sizes come back as fresh pages: one page fault and one
page zeroed by the kernel per 4 KiB touched. On the 1-D bodies (batch 64, 784 tokens) that was 15-58
thousand faults per train step, and the gated CNN's step took 115-130 ms instead of 96-103 ms (README,
*CPU memory allocator*); its element-wise products ran at a fifth of their speed in a warm loop.

:func:`keep_freed_memory` sets glibc's ``mmap`` and trim thresholds (``mallopt``) high, so freed blocks
stay in the heap and are reused, as a caching allocator does (and as the jemalloc settings of
``torch.backends.xeon.run_cpu`` do): the process keeps its peak heap. It is a process setting, taken by
every model alike; the ``visbench`` command applies it before any subcommand. It does nothing where the
C library is not glibc, where the user has set glibc's malloc variables or preloaded another allocator,
or with ``VISBENCH_SYSTEM_MALLOC=1``; the result files record which (``environment.cpu_allocator``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["OPT_OUT_VARIABLE", "allocator_setting", "keep_freed_memory"]

OPT_OUT_VARIABLE = "VISBENCH_SYSTEM_MALLOC"
# mallopt's parameter numbers (glibc's malloc.h) and values: blocks up to 1 GiB come from the heap, and
# the heap's top is given back only when more than 2 GiB of it is free (mallopt takes an int).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 1 << 30
TRIM_THRESHOLD_BYTES = 2**31 - 1
# A user's own choice wins: glibc's malloc variables, its tunables, or another allocator preloaded.
_USER_MALLOC_VARIABLES = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
    "GLIBC_TUNABLES",
)
_PRELOADED_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")

_setting = "system default (not set by visbench)"


def allocator_setting() -> str:
    """What this process's CPU allocator does, in words, for the result files."""
    return _setting


def _reason_to_leave_alone() -> str | None:
    """Why the system allocator must be kept as it is, or None when visbench may set it."""
    if os.environ.get(OPT_OUT_VARIABLE, "") not in ("", "0"):
        return f"system default ({OPT_OUT_VARIABLE} is set)"
    preload = os.environ.get("LD_PRELOAD", "")
    for name in _PRELOADED_ALLOCATORS:
        if name in preload:
            return f"{name} (LD_PRELOAD)"
    user = [name for name in _USER_MALLOC_VARIABLES if name in os.environ]
    if user:
        return f"glibc as the user set it ({', '.join(user)})"
    if platform.libc_ver()[0] != "glibc":
        return "system default (the C library is not glibc)"
    return None


def keep_freed_memory() -> str:
    """Make glibc keep freed blocks for reuse (see the module docstring); returns :func:`allocator_setting`.

    Idempotent. Where it may not or cannot set anything, it leaves the allocator alone and says why.
    """
    global _setting
    reason = _reason_to_leave_alone()
    if reason is not None:
        _setting = reason
        return _setting
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    accepted = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    accepted = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and accepted
    if accepted:
        _setting = "glibc, freed memory kept (mmap threshold 1 GiB, trim threshold 2 GiB)"
    else:
        _setting = "system default (glibc refused mallopt)"
    return _setting
