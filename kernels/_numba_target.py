"""The CPU target numba compiles the cpu kernels for: 512-bit vectors where the CPU has AVX-512.

LLVM's tuning for Intel's AVX-512 server cores (skylake-avx512 and later) prefers 256-bit vectors,
so the kernels' loops over dims ran 8 floats wide on CPUs that do 16. Dropping that preference
(the ``-prefer-256-bit`` tuning feature) gives the loops 512-bit vectors: measured on a 2-core Xeon
(emeraldrapids), the scan's inner recurrence 0.99 -> 0.59 ns per state update and the kernels' exp
0.69 -> 0.44 ns per element, at one thread. CPUs without AVX-512 are left as they are.

numba fixes its target when it creates its first compiled function in the process, so
:func:`configure` must run before any ``njit`` (``_scan_cpu_numba`` calls it first thing); a user's
``NUMBA_CPU_FEATURES`` wins, and ``VISBENCH_NUMBA_WIDE_VECTORS=0`` turns this off (for A/Bs). numba's
on-disk cache keys its entries by the target features, so each setting compiles once.
"""

from __future__ import annotations

import os

import numba

WIDE_VECTORS_ENV = "VISBENCH_NUMBA_WIDE_VECTORS"
_WIDE = ",-prefer-256-bit"


def configure() -> None:
    """Set numba's CPU features to the host's, minus the 256-bit preference, on AVX-512 CPUs."""
    if numba.config.CPU_FEATURES is not None or os.environ.get(WIDE_VECTORS_ENV, "1").strip() == "0":
        return
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features()
    if features.get("avx512f"):
        numba.config.CPU_FEATURES = features.flatten() + _WIDE


def wide_vectors() -> bool:
    """Whether the kernels are compiled with the 256-bit preference dropped."""
    return (numba.config.CPU_FEATURES or "").endswith(_WIDE)
