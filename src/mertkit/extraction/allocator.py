"""Keep freed activation memory in the process between forwards (glibc only).

Why: every CPU forward allocates and frees tens of megabytes of activations (attention
scores, FFN intermediates). With glibc's defaults, blocks above the dynamic mmap threshold
are mmapped afresh and the top of the heap is trimmed back to the kernel on free, so the next
forward page-faults the same memory in again, zero-filled. On the 2-core reference machine
that costs about 12% of a MERT-v1-95M forward in fp32 and more than half of a bf16 attention
(`benchmarks/bench_model.py` measures it). Raising the trim threshold and pinning the mmap
threshold high makes the memory stay mapped after the first forward.

The price: the process keeps its peak heap instead of shrinking after it, which for
extraction is the steady state anyway. The setting is process-wide, so it is applied by
the extraction entry points (not on `import mertkit`) and can be switched off with
MERTKIT_KEEP_FREED_MEMORY=0.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks below the mmap threshold come from the heap and are reused. Attention scores of a
# long batch exceed 32 MiB, so ask for 1 GiB; glibc before 2.35 refuses more than
# HEAP_MAX_SIZE / 2 (32 MiB on 64-bit builds), so that is the fallback.
_MMAP_THRESHOLDS = (1024 * 1024 * 1024, 32 * 1024 * 1024)
_TRIM_THRESHOLD = 2**31 - 1

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tune glibc malloc once per process; True when the setting is in effect.

    A no-op returning False on other C libraries, or when MERTKIT_KEEP_FREED_MEMORY=0.
    """
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if os.environ.get("MERTKIT_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success and 0 on a rejected value.
    trimmed = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    mapped = any(mallopt(_M_MMAP_THRESHOLD, threshold) == 1 for threshold in _MMAP_THRESHOLDS)
    return trimmed and mapped
