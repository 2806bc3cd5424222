"""Memory a worker frees goes back to the system: glibc's malloc, told not to keep large buffers.

Every request body is read whole, and a large one (an upload) is freed once answered.
glibc serves allocations over M_MMAP_THRESHOLD with their own mmap, returned on free,
but it raises that threshold each time such a buffer is freed (up to 32 MB), so later
large bodies come from the heap and stay there: after 64 concurrent 30 MB uploads a
worker went from 2.0 to 3.2 GB and stayed at 2.2 GB (issue 20). Fixing the threshold
keeps every buffer over it in its own mapping, handed back when the request ends.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from typing import Any

log = logging.getLogger("bentoml.bouncer")
M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h
MMAP_THRESHOLD_BYTES = 1024 * 1024  # buffers from 1 MB up get their own mapping: bodies, not the small objects


@functools.cache
def _libc_function(name: str) -> Any:
    """A function of glibc, or None where the C library is another (musl, macOS)."""
    library = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(library), name) if library else None
    except (OSError, AttributeError):
        return None


def return_large_buffers_to_the_system() -> bool:
    """Fix glibc's mmap threshold for this process; False where the C library is not glibc."""
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        log.debug("no mallopt here: large buffers stay with the allocator")
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def trim() -> None:
    """Give the heap's free pages back to the system (after a large body: its small pieces were on the heap)."""
    if (malloc_trim := _libc_function("malloc_trim")) is not None:
        malloc_trim(0)
