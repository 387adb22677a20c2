"""The process's C allocator, told to keep the memory a run frees for its next allocation.

A run loop allocates and frees the same few megabytes again and again: a segment's columns
as NumPy arrays (concatenated, masked, converted to Arrow), then freed after it is written.
glibc's malloc hands large blocks back to the kernel when they are freed (`munmap`, or a
trim of the heap's top) and maps them afresh next time, paying a page fault for every 4 KiB
touched. Told to keep up to `KEEP` bytes at the top of the heap and to serve blocks up to
`FROM_HEAP` from it, the loop reuses the pages it already has.

Measured (docs/engine.md, "The C allocator"): a 10M-event Chain run of random bidders under
CCV, 256 episodes at a time, runs its loop in 5.2 s instead of 6.4 s (system time 1.9 s ->
0.8 s), at the same peak memory. Polars and Arrow have allocators of their own and are not
affected. Called once by the `market` console script; a library never changes the process
it is imported into.

Polars' own allocator (jemalloc) hands freed pages back to the kernel after a decay time, and
an audit frees and reallocates a chunk's columns every fraction of a second. The console
script sets `POLARS_DECAY` (`keep_polars_freed_memory`) before Polars is loaded, which is
when jemalloc reads it: measured on a 10M-event audit, 0.4 s less system time of 6.7 s of
CPU, at 60-90 MB more peak memory (docs/engine.md, "The C allocator").
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import MutableMapping

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
"""glibc's `mallopt` parameters (malloc.h)."""
FROM_HEAP = 32 << 20
"""Blocks up to this size come from the heap, not their own mapping (glibc's maximum)."""
KEEP = 256 << 20
"""Freed memory at the heap's top kept for reuse, not returned to the kernel."""
PAD = 64 << 20
"""Extra memory taken each time the heap grows."""


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as above; False (nothing changed) where there is no glibc."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    settings = ((_M_MMAP_THRESHOLD, FROM_HEAP), (_M_TRIM_THRESHOLD, KEEP), (_M_TOP_PAD, PAD))
    return all(mallopt(param, value) == 1 for param, value in settings)


POLARS_CONF = "_RJEM_MALLOC_CONF"
"""The environment variable Polars' jemalloc reads its settings from, once, when loaded."""
POLARS_DECAY = "dirty_decay_ms:30000,muzzy_decay_ms:30000"
"""Freed pages kept 30 s before they are returned to the kernel (jemalloc's default: 10 s
dirty, then returned at once)."""


def keep_polars_freed_memory(environ: MutableMapping[str, str]) -> bool:
    """Set `POLARS_DECAY` in `environ` unless the user set Polars' allocator themselves;
    it takes effect only if Polars is not loaded yet. True if set."""
    if POLARS_CONF in environ:
        return False
    environ[POLARS_CONF] = POLARS_DECAY
    return True
