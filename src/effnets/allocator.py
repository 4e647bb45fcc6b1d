"""The C library's memory allocator, set for long-running PyTorch jobs on Linux CPUs.

PyTorch caches GPU memory but not CPU memory: every CPU tensor is a ``malloc`` and every
freed one a ``free``.  glibc serves blocks above its mmap threshold (dynamic, at most 32 MiB)
with fresh ``mmap`` pages and unmaps them on ``free``, and it hands the top of its heap back to
the kernel once more than the trim threshold is free there.  A training step or a large batch
allocates the same large buffers again and again, so each time the kernel maps and zeroes
them one 4 KiB page fault at a time.  On the development VM a page fault costs about
0.9 us (a fresh 37 MiB buffer takes 12 ms to fill, an already mapped one 3.4 ms), and an
efficientnet_b0 training step at batch 16 pays that on hundreds of MiB
(``benchmarks/allocator.py`` measures it for effnets, timm and torchvision alike).

:func:`keep_freed_memory` makes glibc keep freed memory for reuse instead (no ``mmap`` for
large blocks, no trimming), which is what caching allocators (jemalloc, tcmalloc, PyTorch's
CUDA allocator) do.  Process-wide and for the rest of the process: the resident size stays at
its peak, and a little above it, because PyTorch's 64-byte-aligned blocks do not always fit the
chunk just freed, so the heap grows a few times before reuse settles (efficientnet_b0 training
at batch 16: 1902 vs 1774 MiB peak resident, ``benchmarks/allocator.py --tasks train``).  It suits a process
that trains or serves one model, and ``effnets train`` turns it on for itself
(``--no-keep-freed-memory`` leaves glibc as it is).  The environment variables
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<bytes>`` do the same for any program.
"""
from __future__ import annotations

import ctypes
import platform

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# the trim threshold set: large enough never to trim, small enough for glibc's int parameter
_NEVER_TRIM = 2 ** 31 - 1


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def keep_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse (see the module docstring): large
    blocks come from the heap instead of ``mmap``, and the heap is never trimmed.  Returns
    True when applied, False where the C library is not glibc (macOS, Windows, musl), where
    nothing changes.  Process-wide and permanent for the process; :func:`release_freed_memory`
    hands the free memory back once, e.g. after training."""
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = libc.mallopt(_M_MMAP_MAX, 0) == 1
    ok = libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) == 1 and ok
    return ok


def release_freed_memory() -> bool:
    """Return the free memory at the top of glibc's heap to the kernel now (``malloc_trim``).
    True if memory was released; False if there was none or the C library is not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc.malloc_trim(0) == 1


__all__ = ["keep_freed_memory", "release_freed_memory"]
