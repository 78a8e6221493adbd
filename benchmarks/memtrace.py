"""Run ``satmon`` under memory instrumentation, writing what it sees every ``SOAK_TRACE_EVERY`` s.

The soak starts the worker as ``python [-X tracemalloc=N] benchmarks/memtrace.py worker``. A
daemon thread writes, into ``SOAK_TRACE_DIR``:

- ``NNNN.json``: resident memory, and pymalloc's own accounting (``sys._debugmallocstats``:
  arenas held, bytes in live blocks, free blocks and unused pools), which tells live Python
  objects from arena fragmentation;
- ``NNNN.snap`` (``bench_soak.py --trace``, tracemalloc on): a heap snapshot, naming the
  source lines whose allocations grew;
- ``NNNN.census.json`` (``--census``, tracemalloc off, so the worker runs at full speed): the
  garbage collector's objects counted by type, and the large containers with what holds them.

Not a product path: tracing slows the worker by about a third (more with more frames).
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
import tracemalloc
from pathlib import Path

from bench_soak import rss_mb   # this script's directory is on sys.path


def census(big: int = 2000, top: int = 24) -> dict[str, object]:
    """Objects the garbage collector tracks, counted by type, and the large containers with what
    holds them (``Owner.attribute`` for an instance's attribute): names the holder of a slow
    accumulation that tracemalloc's allocation sites do not."""
    import gc
    import types
    from collections import Counter, deque

    def attribute(owner: object, d: dict, o: object) -> str:
        for k, v in d.items():
            if v is o:
                return f"{type(owner).__qualname__}.{k}"
        return type(owner).__qualname__

    # The worker freezes what it built at start-up (``gc.freeze``): neither ``get_objects`` nor
    # ``get_referrers`` sees the permanent generation, so a holder built then would go unnamed.
    # Unfrozen once, here: the worker's full collections traverse those objects again (slower,
    # not a product setting).
    gc.unfreeze()
    # Counted right after a full collection, so that two samples compare live objects, not how
    # much garbage happened to wait for the next collection.
    garbage = gc.collect()
    objs = gc.get_objects()
    by_type: Counter[str] = Counter()
    bytes_by_type: Counter[str] = Counter()
    for o in objs:
        name = type(o).__qualname__
        by_type[name] += 1
        bytes_by_type[name] += sys.getsizeof(o)
    large = [o for o in objs if isinstance(o, (dict, list, set, deque)) and len(o) >= big]
    large = sorted(large, key=len, reverse=True)[:top]   # each holder lookup scans every object
    rows = []
    for o in large:
        holders = set()
        for r in gc.get_referrers(o):
            if r is objs or r is large or isinstance(r, (types.FrameType, types.CellType)):
                continue
            if isinstance(r, dict):   # a materialised instance __dict__, or a plain dict
                owner = None
                for x in gc.get_referrers(r):
                    if getattr(x, "__dict__", None) is r:
                        owner = x
                        break
                holders.add(attribute(owner, r, o) if owner is not None else "dict")
            elif isinstance(getattr(r, "__dict__", None), dict):   # attributes held inline (3.11+)
                holders.add(attribute(r, vars(r), o))
            else:
                holders.add(type(r).__qualname__)
        rows.append({"type": type(o).__qualname__, "len": len(o), "held_by": sorted(holders)[:4]})
    del objs, large
    return {"collected": garbage, "by_type": dict(by_type), "bytes_by_type": dict(bytes_by_type.most_common(80)),
            "large": rows}


_PYMALLOC = {"# arenas allocated current": "arenas", "# arenas highwater mark": "arenas_highwater",
             "# bytes in allocated blocks": "live_bytes", "# bytes in available blocks": "free_block_bytes",
             "unused pools": "unused_pool_bytes"}


_STATS_LINE = re.compile(r"^(\s|#|\d|-|class|Total|Small block|arena map)")


def pymalloc_stats() -> dict[str, int]:
    """pymalloc's arena accounting. ``sys._debugmallocstats`` prints to the C-level stderr, so
    fd 2 is pointed at a file for the call (lines other threads write meanwhile land there too:
    they are copied back to stderr)."""
    import tempfile

    with tempfile.TemporaryFile() as f:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(f.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read().decode(errors="replace")
    out: dict[str, int] = {}
    for line in text.splitlines():
        if _STATS_LINE.match(line):
            name, _, value = line.partition("=")
            key = next((k for prefix, k in _PYMALLOC.items() if prefix in name), None)
            if key and key not in out:
                out[key] = int(value.strip().replace(",", ""))
        elif line.strip():
            os.write(2, (line + "\n").encode())   # another thread's, written meanwhile
    return out


def _dump(out: Path, every: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    while True:
        time.sleep(every)
        meta: dict[str, object] = {"t": time.time(), "rss_mb": rss_mb(os.getpid())}
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(str(out / f"{n:04d}.snap"))
            traced, peak = tracemalloc.get_traced_memory()
            meta |= {"traced_mb": traced / 2**20, "peak_mb": peak / 2**20}
        if os.environ.get("SOAK_CENSUS"):
            (out / f"{n:04d}.census.json").write_text(json.dumps(census()))
        meta["pymalloc"] = pymalloc_stats()
        (out / f"{n:04d}.json").write_text(json.dumps(meta))   # last: its presence says the rest is written
        n += 1


def main() -> int:
    out = Path(os.environ.get("SOAK_TRACE_DIR", "memtrace"))
    every = float(os.environ.get("SOAK_TRACE_EVERY", "60"))
    threading.Thread(target=_dump, args=(out, every), name="memtrace", daemon=True).start()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from monitor.cli import main as satmon

    sys.argv[0] = "satmon"
    return satmon()


if __name__ == "__main__":
    raise SystemExit(main())
