"""glibc heap settings for training on the CPU: the memory one step frees serves the next step's
tensors, instead of going back to the kernel and being faulted in again."""
from __future__ import annotations

import ctypes
import platform

__all__ = ["keep_freed_memory", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
#: allocations up to this size come from the heap (glibc's cap on M_MMAP_THRESHOLD on 64-bit)
MMAP_THRESHOLD = 32 << 20
#: free memory at the top of the heap kept for reuse before any is returned to the kernel
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Where the C library is glibc: serve allocations up to 32 MiB from the heap and keep up to
    1 GiB of freed heap memory (``mallopt``: ``M_MMAP_THRESHOLD``, ``M_TRIM_THRESHOLD``).

    By default glibc maps most activation-sized blocks afresh and unmaps them when freed, so
    every training step page-faults its tensors in again (1,500 faults, 3 ms of kernel time in
    a 43 ms demo-model step). Process-wide, and still in force after training: the process
    keeps the memory its steps used. Returns whether the settings took (False off glibc).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD,
                                                                                        TRIM_THRESHOLD))
