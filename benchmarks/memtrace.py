"""Run ``satmon`` with tracemalloc on and write a heap snapshot every ``SOAK_TRACE_EVERY`` seconds.

The soak (``bench_soak.py --trace``) starts the worker as
``python -X tracemalloc=1 benchmarks/memtrace.py worker``. A daemon thread dumps
``tracemalloc.take_snapshot()`` into ``SOAK_TRACE_DIR`` (``NNNN.snap``, with the process's
resident memory at that moment in ``NNNN.json``), so the soak can tell memory Python allocated
(and where) from native memory (RocksDB, the allocator's free lists).

Not a product path: tracing slows the worker by about a third.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path

from bench_soak import rss_mb   # this script's directory is on sys.path


def _dump(out: Path, every: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    while True:
        time.sleep(every)
        snap = tracemalloc.take_snapshot()
        snap.dump(str(out / f"{n:04d}.snap"))
        traced, peak = tracemalloc.get_traced_memory()
        (out / f"{n:04d}.json").write_text(json.dumps(
            {"t": time.time(), "rss_mb": rss_mb(os.getpid()), "traced_mb": traced / 2**20, "peak_mb": peak / 2**20}))
        n += 1


def main() -> int:
    if not tracemalloc.is_tracing():
        tracemalloc.start(1)
    out = Path(os.environ.get("SOAK_TRACE_DIR", "memtrace"))
    every = float(os.environ.get("SOAK_TRACE_EVERY", "60"))
    threading.Thread(target=_dump, args=(out, every), name="memtrace", daemon=True).start()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from monitor.cli import main as satmon

    sys.argv[0] = "satmon"
    return satmon()


if __name__ == "__main__":
    raise SystemExit(main())
