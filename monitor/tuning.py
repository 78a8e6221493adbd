"""Process tuning of a worker (and of replay, which measures the same code): the cyclic garbage
collector's thresholds and glibc's malloc. Pure standard library: no Kafka, no event loop.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

#: cyclic-GC thresholds of a worker process (CPython's default is (700, 10, 10)). A batch allocates
#: tens of thousands of short-lived containers (decoded events, window accumulators, outputs): with
#: the default the collector runs a young collection every 700 allocations and traverses them --
#: measured as the largest single cost of the windows path, and ~15 % of a worker's throughput. The
#: objects a batch creates are freed by reference counting; the collector is only needed for the
#: rare cycle, so here a young collection runs every 200,000 net allocations (~0.1 s at full load),
#: an older one every 50 of those and a full one every 100 older ones. In steady state net
#: allocations stay near zero, so that full collection in practice never comes: the worker runs one
#: on a timer instead (``gc_full_s``, ``monitor.worker.app.full_collection``), or a cycle promoted to the
#: oldest generation would stay for the life of the process (the soak's census found them).
#: ``benchmarks/run.py`` measures the worker with these.
GC_THRESHOLDS = (200_000, 50, 100)


def tune_gc(thresholds: tuple[int, int, int] = GC_THRESHOLDS) -> None:
    """Move everything alive now (modules, the app, the model) out of the collector's sight with
    :func:`gc.freeze` and raise its thresholds: call once at start-up, after the worker is built."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)


#: glibc's mallopt parameters: the number of malloc arenas; the size from which an allocation gets
#: its own mapping
_M_ARENA_MAX = -8
_M_MMAP_THRESHOLD = -3
#: satmon's mmap threshold (glibc's initial default). Setting it turns off glibc's *dynamic*
#: threshold, which rises to the size of every large block freed (up to 32 MiB) and from then on
#: serves fetch buffers and batch-sized lists from the heap, where each bigger batch raises a
#: high-water mark that trimming cannot lower while a live block sits above it.
MMAP_THRESHOLD = 128 * 1024


@functools.lru_cache(maxsize=1)
def _glibc() -> Any:
    """The C library if it is glibc (``mallopt``/``malloc_trim``), else None (musl, macOS); loaded once."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 -- both exist only in glibc
    except (OSError, AttributeError):
        return None
    return libc


def tune_malloc(arena_max: int = 2, mmap_threshold: int | None = MMAP_THRESHOLD) -> bool:
    """Cap glibc's malloc arenas and fix its mmap threshold (call before threads start). A worker
    allocates fetch buffers in the Kafka consumer thread and frees them in the event loop's, and
    RocksDB allocates from its own threads: with glibc's default of 8 arenas per core the freed
    memory stays spread over arenas that are never reused, and resident memory ratchets up a
    little at every load peak. Large blocks (``mmap_threshold`` and up, None = glibc's dynamic
    default) are mapped and unmapped on their own instead. Returns False where the C library is
    not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(_M_ARENA_MAX, arena_max))
    if mmap_threshold is not None:
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and ok
    return ok


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def malloc_stats() -> dict[str, int]:
    """glibc's heap, summed over its arenas (``mallinfo2``): ``in_use`` (allocated chunks, which
    includes RocksDB and every C extension but not Python's small-object arenas, which are
    mmapped directly), ``free`` (freed but still held: fragmentation, or not yet trimmed) and
    ``mmapped`` (large allocations in their own mappings). Empty where the C library is not glibc
    2.33 or later."""
    libc = _glibc()
    fn = getattr(libc, "mallinfo2", None) if libc is not None else None
    if fn is None:
        return {}
    fn.restype = _Mallinfo2
    info = fn()
    return {"in_use": info.uordblks, "free": info.fordblks, "mmapped": info.hblkhd}


def trim_malloc() -> bool:
    """Hand free heap pages back to the OS (glibc ``malloc_trim(0)``, which also releases whole free
    pages inside the heap). True if memory was released."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))
