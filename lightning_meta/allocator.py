"""Keep freed memory in the process on glibc, so that a training step's large tensors are not page-faulted in again
on every allocation.

glibc serves blocks above its mmap threshold (128 KB at start, adjusted upward as blocks are freed) with a fresh
`mmap` and returns them with `munmap`, and trims the top of its heap back to the OS beyond 128 KB free. A
meta-iteration allocates and frees the same activation sizes over and over (75 query images through Conv4-64 are
15 MB per layer output), so each one is touched for the first time again: a page fault per 4 KB page, taken inside
the convolution, batch norm and ReLU kernels. Raising both thresholds once (`mallopt`, what the environment
variables MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ set) keeps the pages mapped and reused. What it saves
is in docs/performance.md ("glibc allocator thresholds"); re-measure it with
`python -m benchmarks.speed --algorithms maml --queries 15 --rows a --no-memory`, once as is and once with
LIGHTNING_META_KEEP_MALLOC=1 (glibc's defaults). The cost: the process keeps its peak memory instead of handing
freed pages back.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 2**30
ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LIGHTNING_META_KEEP_MALLOC")


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True when applied. Nothing happens off glibc, or
    when the environment sets either threshold itself (or LIGHTNING_META_KEEP_MALLOC, to keep glibc's defaults)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in ENVIRONMENT):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
