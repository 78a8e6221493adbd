"""Memory per subscriber of the risk core, at 100,000 and 1,000,000 simulated subscribers.

For each population the simulator's default scenario runs for ``--hours`` (streamed, never held in
memory) through four :class:`monitor.scoring.core.PartitionCore` objects, as in a worker with four
partitions. Reported per subscriber:

* ``state_bytes``: the serialised state (msgpack) -- what the state table and its changelog hold;
* ``rss_bytes_all_cached``: resident memory growth of the process divided by the subscribers, when
  every subscriber stays cached in memory (no state table behind the cores);
* with ``--rocksdb``, the same run with a RocksDB table (rocksdict, as the workers use) behind the
  cores and the cache bounded by ``state_cache_per_partition``: resident memory stays flat.

    python benchmarks/bench_memory.py --subscribers 100000 1000000 [--rocksdb] [--out results.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from monitor.sim import simulate  # noqa: E402
from monitor.scoring.core import PartitionCore, _encode_state  # noqa: E402
from monitor.records.topics import partition_for  # noqa: E402
from monitor.records.events import INPUT_TOPICS, decode  # noqa: E402
from monitor.records.errors import InvalidEventError  # noqa: E402


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure(subscribers: int, hours: float, *, rocksdb: bool, cache: int, partitions: int = 4) -> dict:
    config = simulate.SimConfig(subscribers=subscribers, hours=hours, seed=3)
    db = tmpdir = None
    loader = None
    if rocksdb:
        from rocksdict import Rdict

        tmpdir = tempfile.mkdtemp(prefix="satmon-mem-")
        db = Rdict(tmpdir)
        loader = db.get
    gc.collect()
    base = rss_bytes()
    cores = [PartitionCore(p, state_cache_per_partition=cache, state_loader=loader, clock_ms=lambda: 0)
             for p in range(partitions)]
    part: dict[str, int] = {}
    schemas = dict(INPUT_TOPICS)
    events = 0
    peak = base
    t0 = time.perf_counter()
    for topic, key, value in simulate.generate(config):
        try:
            ev = decode(schemas[topic], value)
        except InvalidEventError:
            continue
        sid = ev.subscriber_id
        p = part.get(sid)
        if p is None:
            p = part[sid] = partition_for(sid.encode(), partitions)
        core = cores[p]
        core.process(ev)
        events += 1
        if db is not None and len(core.dirty) >= 2000:
            for k, v in core.take_dirty().items():
                if v is None:
                    db.delete(k)
                else:
                    db[k] = v
        if events % 200_000 == 0:
            peak = max(peak, rss_bytes())
    if db is not None:
        for core in cores:
            for k, v in core.take_dirty().items():
                db[k] = v
    elapsed = time.perf_counter() - t0
    del part
    gc.collect()
    grown = rss_bytes() - base
    peak = max(peak, rss_bytes()) - base
    cached = sum(len(c.states) for c in cores)
    sample = [len(_encode_state(st)) for c in cores for st in list(c.states.values())[:20_000]]
    out = {
        "subscribers": subscribers, "hours": hours, "events": events, "events_per_s": round(events / elapsed),
        "seen": cached if db is None else None,
        "cached": cached, "cache_per_partition": cache if db is not None else None,
        "state_bytes_mean": round(sum(sample) / len(sample), 1), "state_bytes_max": max(sample),
        "rss_growth_mb": round(grown / 2**20, 1), "rss_peak_growth_mb": round(peak / 2**20, 1),
        # per subscriber held in memory (all of them when nothing backs the cache)
        "rss_bytes_per_cached_subscriber": round(grown / max(1, cached), 1),
        "store": "rocksdict" if db is not None else "memory (all cached)",
    }
    if db is not None:
        db.close()
        shutil.rmtree(tmpdir, ignore_errors=True)
    return out


def measure_view(subscribers: int, *, history: int | None = None, pool_hours: float = 2.0) -> dict:
    """Memory of the outreach view (:class:`monitor.outreach.view.RiskView`) per subscriber, every
    subscriber with a full history ring (the steady state), measured with tracemalloc.

    The scores are real: the risk core's emitted scores from a simulator run (``pool_hours`` of
    5,000 subscribers), re-keyed to ``subscribers`` ids and applied as the view's feeder does
    (encoded, decoded, applied), ``history`` of them per subscriber. The change log (a fixed 16
    bytes per score up to its bound) is reported separately."""
    import msgspec
    import tracemalloc

    from monitor.records.events import encode
    from monitor.outreach.view import DEFAULT_HISTORY, RiskView

    history = history or DEFAULT_HISTORY
    core = PartitionCore(0, state_cache_per_partition=10**12, clock_ms=lambda: 0)
    schemas = dict(INPUT_TOPICS)
    pool = []
    for topic, _key, value in simulate.generate(simulate.SimConfig(subscribers=5_000, hours=pool_hours, seed=5)):
        try:
            score = core.process(decode(schemas[topic], value))
        except InvalidEventError:
            continue
        if score is not None:
            pool.append(score)
    ids = [f"{i:032x}" for i in range(subscribers)]   # as long as a pseudonymised id
    gc.collect()
    tracemalloc.start()
    view = RiskView(history=history, change_log=subscribers * history + 1)
    offset = 0
    for k in range(history):
        for i, sid in enumerate(ids):
            view.apply_raw(encode(msgspec.structs.replace(pool[(i * history + k) % len(pool)], subscriber_id=sid)),
                           0, offset)
            offset += 1
    held = tracemalloc.get_traced_memory()[0]
    log_bytes = sum(len(o) * o.itemsize for o in view._log_offsets) + sum(8 * len(s) for s in view._log_sids)
    tracemalloc.stop()
    return {"view_subscribers": subscribers, "history": history, "scores_applied": offset,
            "at_risk": view.at_risk_count, "score_pool": len(pool),
            "view_bytes_per_subscriber": round((held - log_bytes) / subscribers, 1),
            "change_log_bytes_per_score": round(log_bytes / offset, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subscribers", type=int, nargs="*", default=[100_000, 1_000_000])
    ap.add_argument("--hours", type=float, default=0.5, help="simulated time per population (default 0.5 h)")
    ap.add_argument("--rocksdb", action="store_true", help="also run with a RocksDB table and a bounded cache")
    ap.add_argument("--cache", type=int, default=50_000, help="state_cache_per_partition for the RocksDB run")
    ap.add_argument("--view", type=int, default=0, metavar="N",
                    help="also measure the outreach view with N subscribers, full history rings")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    runs = []
    if args.view:
        runs.append(measure_view(args.view))
        print(json.dumps(runs[-1]), flush=True)
    for n in args.subscribers:
        runs.append(measure(n, args.hours, rocksdb=False, cache=10**12))
        print(json.dumps(runs[-1]), flush=True)
        if args.rocksdb:
            runs.append(measure(n, args.hours, rocksdb=True, cache=args.cache))
            print(json.dumps(runs[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"memory": runs}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
