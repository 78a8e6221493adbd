"""Soak: one production worker under steady simulated load for many minutes; is its memory flat?

Starts the embedded Tansu broker, one ``satmon worker`` (RocksDB store, the production defaults:
hot-spot windows, detectors, the outreach view) and the simulator (default scenario, its
incidents and noise, ``--loop`` at a fixed rate), then samples the worker's resident memory and
its processed-event counter every ``--every`` seconds. After a warm-up (``--warmup``, the first
half by default: every subscriber seen, caches filled, each subscriber's score history in the
outreach view full) the resident memory must stop growing: the report gives the slope of a
least-squares line through the post-warm-up samples, in MB per million events, and the growth as a
share of the memory at the end of the warm-up.

At 4,000 records/s the default 10,000 subscribers live ~27 simulated hours in 12 minutes, so every
time-of-day structure (the hot-spot baselines by hour) is filled too. The outreach view's change
log is bounded per partition of ``risk-scores`` (200,000 entries): with the default 2 partitions it
is full after ~3 M events, inside the warm-up (with 4 it fills only at ~7 M, the end of the run).
Each sample records the view's history versions and change-log entries, so the report can say
when both bounds were reached.

    python benchmarks/bench_soak.py --minutes 30 --rate 4000 --subscribers 10000 --partitions 2   # ./run soak
    # -> benchmarks/soak.json (every sample) and a summary line

The broker keeps every record in memory (Tansu, memory storage); it is measured separately
(``broker_rss_mb``) and is not the worker's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MB (0 when it is gone)."""
    try:
        m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    except OSError:
        return 0.0
    return int(m.group(1)) / 1024 if m else 0.0


def rss_split_mb(pid: int) -> dict[str, float]:
    """Anonymous (heap, arenas, stacks) and file-backed (code, libraries) resident memory, MB."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {f"{key.lower()}_mb": round(int(m.group(1)) / 1024, 1)
            for key in ("RssAnon", "RssFile") if (m := re.search(rf"^{key}:\s+(\d+) kB", text, re.M))}


def memory_parts(port: int) -> dict[str, float]:
    """The worker's own account of its memory, MB: RocksDB by table and kind
    (``satmon_worker_store_memory_bytes``) and the C heap (``satmon_worker_malloc_bytes``); and
    what its outreach view holds (subscribers, history versions, change-log entries), the hot-spot
    windows held open and baselines learnt (counts, not MB)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "satmon_worker_store_memory_bytes":
            for s in family.samples:
                out[f"rocksdb_{s.labels['table']}_{s.labels['kind']}_mb"] = round(s.value / 2**20, 2)
        elif family.name == "satmon_worker_malloc_bytes":
            for s in family.samples:
                out[f"malloc_{s.labels['kind']}_mb"] = round(s.value / 2**20, 1)
        elif family.name == "satmon_worker_python_blocks":
            # live Python allocations (a count): flat while the arenas grow means fragmentation
            out["python_blocks"] = family.samples[0].value
        elif family.name == "satmon_worker_window_cells_open":
            # hot-spot windows held open (a backlog holds closing back): a count, not MB
            for s in family.samples:
                out[f"window_cells_open_{s.labels['side']}"] = s.value
        elif family.name == "python_gc_collections":
            # the worker raises the cyclic collector's thresholds: how often each generation still runs
            for s in family.samples:
                if s.name.endswith("_total"):
                    out[f"gc_collections_gen{s.labels['generation']}"] = s.value
        elif family.name in ("satmon_worker_hotspot_baselines", "satmon_view_subscribers"):
            # bounded counts that take a long time to fill: hour-of-day baselines of sparse cells
            out[family.name.removeprefix("satmon_worker_").removeprefix("satmon_")] = family.samples[0].value
        elif family.name in ("satmon_view_history_versions", "satmon_view_change_log_entries"):
            # what the view holds grows until every ring and change log is full: the warm-up's end
            out[family.name.removeprefix("satmon_")] = family.samples[0].value
    return out


def counters(port: int) -> tuple[float, float] | None:
    """(records processed or dead-lettered, batches handled) from the worker's /metrics."""
    from monitor.commands.demo import scrape

    m = scrape(port)
    if not m:
        return None
    return (m.get("satmon_ingest_events_decoded_total", 0.0) + m.get("satmon_ingest_records_dead_lettered_total", 0.0),
            m.get("satmon_worker_batches_total", 0.0))


def processed(port: int) -> float | None:
    c = counters(port)
    return None if c is None else c[0]


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` over ``xs`` (0 with fewer than two distinct xs)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0


def slope_halfwidth(xs: list[float], ys: list[float], z: float = 1.96) -> float | None:
    """Half-width of the slope's ~95% interval (``z`` standard errors of the least-squares slope,
    from the scatter around the line): a slope inside its own half-width of zero is one the
    samples cannot tell from flat. ``None`` with fewer than three points or distinct xs."""
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if not sxx:
        return None
    b = slope(xs, ys)
    resid = sum((y - my - b * (x - mx)) ** 2 for x, y in zip(xs, ys))
    return z * (resid / (n - 2) / sxx) ** 0.5


def slope_at_fixed_batch(samples: list[dict[str, float]]) -> dict[str, float] | None:
    """Resident memory regressed on events *and* records per batch: the embedded broker slows as it
    fills, batches grow (towards the ``max_poll_records`` setting) and so does the transient high-water
    mark of each batch. The first coefficient is the growth per million events a worker would show at
    an unchanged batch size, the second what each extra 100 records per batch costs."""
    import numpy as np

    rows = [(s["events"] / 1e6, s["records_per_batch"], s["worker_rss_mb"]) for s in samples
            if s.get("records_per_batch") is not None]
    if len(rows) < 4:
        return None
    x = np.array([[1.0, e, b / 100] for e, b, _ in rows])
    y = np.array([r for _, _, r in rows])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return {"mb_per_million_events": round(float(coef[1]), 2), "mb_per_100_records_per_batch": round(float(coef[2]), 2)}


def trace_report(trace_dir: Path, warmup: float, top: int = 25) -> dict[str, object]:
    """What ``memtrace.py`` wrote, from the end of the warm-up to the last sample: resident memory
    against pymalloc's arenas and live bytes (and tracemalloc's total, when tracing); the source
    lines whose allocations grew the most (``--trace``); the object types and large containers
    that grew, with what holds them (``--census``)."""
    metas = sorted(trace_dir.glob("*.json"))
    metas = [m for m in metas if m.name.count(".") == 1]
    if len(metas) < 2:
        return {"error": f"{len(metas)} sample(s) in {trace_dir}: run longer than two trace periods"}
    i = min(int(len(metas) * warmup), len(metas) - 2)
    first, last = metas[i], metas[-1]
    series = [json.loads(p.read_text()) for p in metas]
    out: dict[str, object] = {"from": first.stem, "to": last.stem, "samples": [
        {"rss_mb": round(m["rss_mb"], 1), **({"traced_mb": round(m["traced_mb"], 1)} if "traced_mb" in m else {}),
         **{f"pymalloc_{k}_mb" if k.endswith("bytes") else f"pymalloc_{k}":
            (round(v / 2**20, 1) if k.endswith("bytes") else v) for k, v in m.get("pymalloc", {}).items()}}
        for m in series]}
    snap = (first.with_suffix(".snap"), last.with_suffix(".snap"))
    if all(p.exists() for p in snap):
        import tracemalloc

        diff = tracemalloc.Snapshot.load(str(snap[1])).compare_to(tracemalloc.Snapshot.load(str(snap[0])), "lineno")
        out["top_growth"] = [{"where": str(d.traceback), "size_diff_kb": round(d.size_diff / 1024, 1),
                              "count_diff": d.count_diff, "size_kb": round(d.size / 1024, 1)} for d in diff[:top]]
    census = [trace_dir / f"{p.stem}.census.json" for p in (first, last)]
    if all(p.exists() for p in census):
        a, b = (json.loads(p.read_text()) for p in census)
        types = {t: b["by_type"].get(t, 0) - a["by_type"].get(t, 0) for t in set(a["by_type"]) | set(b["by_type"])}
        out["types_grown"] = dict(sorted(((t, d) for t, d in types.items() if d), key=lambda x: -abs(x[1]))[:top])
        if "bytes_by_type" in a and "bytes_by_type" in b:
            sizes = {t: b["bytes_by_type"].get(t, 0) - a["bytes_by_type"].get(t, 0)
                     for t in set(a["bytes_by_type"]) | set(b["bytes_by_type"])}
            out["type_bytes_grown_kb"] = {t: round(d / 1024, 1) for t, d in
                                          sorted(sizes.items(), key=lambda x: -abs(x[1]))[:top] if d}
        before = {(r["type"], tuple(r["held_by"])): r["len"] for r in a["large"]}
        out["containers_grown"] = sorted(
            ({**r, "len_before": before.get((r["type"], tuple(r["held_by"])))} for r in b["large"]
             if r["len"] > before.get((r["type"], tuple(r["held_by"])), 0)),
            key=lambda r: -(r["len"] - (r["len_before"] or 0)))[:top]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=4000, help="simulated records/s (default 4000)")
    ap.add_argument("--subscribers", type=int, default=10_000)
    ap.add_argument("--warmup", type=float, default=0.5, help="share of the run that is warm-up (default 1/2)")
    ap.add_argument("--partitions", type=int, default=2,
                    help="partitions per topic (default 2: the view's change log is full within the warm-up)")
    ap.add_argument("--every", type=float, default=20.0, help="sampling period, seconds")
    ap.add_argument("--out", type=Path, default=HERE / "soak.json")
    ap.add_argument("--trace-frames", type=int, default=1, metavar="N",
                    help="frames kept per traced allocation (more names the caller, and slows the worker more)")
    ap.add_argument("--trace", type=float, default=0.0, metavar="SECONDS",
                    help="run the worker under tracemalloc, a heap snapshot every SECONDS; the report then "
                         "names the source lines whose memory grew after the warm-up (slows the worker)")
    ap.add_argument("--census", type=float, default=0.0, metavar="SECONDS",
                    help="every SECONDS count the worker's objects by type, list its large containers and what "
                         "holds them, and read pymalloc's arena accounting (no tracing: full speed)")
    ap.add_argument("--max-poll-records", type=int, default=0, metavar="N",
                    help="the worker's max_poll_records (default: its own, 2000). Below the records that "
                         "arrive per fetch, batches keep about one size (measured: 313-356 records at 400), so "
                         "a broker slowing as it fills no longer grows the transient peak")
    args = ap.parse_args(argv)
    import signal

    # Stopped early (kill, Ctrl-C): still stop the broker, worker and simulator in ``finally``.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from monitor.worker.broker import EmbeddedBroker
    from monitor.worker.kafka import create_topics

    tmp = Path(tempfile.mkdtemp(prefix="satmon-soak-"))
    broker = EmbeddedBroker(data_dir=tmp / "broker", partitions=args.partitions)
    url = broker.start()
    create_topics(url, args.partitions)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from monitor.outreach.privacy import ensure_key_file

    key_file = ensure_key_file(tmp / "pseudonym.key")   # production default: pseudonymised at ingest
    env = dict(os.environ, SATMON_PSEUDONYM_KEY_FILE=str(key_file), SATMON_BROKER=url, SATMON_PARTITIONS=str(args.partitions),
               SATMON_DATA_DIR=str(tmp / "worker"), SATMON_WEB_PORT=str(port), SATMON_LOG_LEVEL="WARNING")
    if args.max_poll_records:
        env["SATMON_MAX_POLL_RECORDS"] = str(args.max_poll_records)
    satmon = [sys.executable, "-m", "monitor"]
    logs = open(tmp / "worker.log", "wb")
    trace_dir = tmp / "memtrace"
    if args.trace or args.census:
        env.update(SOAK_TRACE_DIR=str(trace_dir), SOAK_TRACE_EVERY=str(args.trace or args.census))
        worker_cmd = [sys.executable, *(["-X", f"tracemalloc={args.trace_frames}"] if args.trace else []),
                      str(HERE / "memtrace.py"), "worker"]
        if args.census:
            env["SOAK_CENSUS"] = "1"
    else:
        worker_cmd = satmon + ["worker"]
    worker = subprocess.Popen(worker_cmd, env=env, stdout=logs, stderr=subprocess.STDOUT)
    sim = None
    samples: list[dict[str, float]] = []
    try:
        deadline = time.monotonic() + 120
        while processed(port) is None:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"worker did not come up: see {tmp / 'worker.log'}")
            time.sleep(0.5)
        sim = subprocess.Popen(satmon + ["simulate", "--broker", url, "--rate", str(args.rate), "--loop",
                                         "--subscribers", str(args.subscribers), "--scenario", "default"],
                               env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "simulator.log", "wb"))
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        while time.monotonic() < end:
            time.sleep(args.every)
            if worker.poll() is not None:
                raise SystemExit(f"worker exited {worker.returncode}: see {tmp / 'worker.log'}")
            n, batches = counters(port) or (0.0, 0.0)
            # records per batch since the last sample: a broker falling behind means bigger batches
            # (a higher high-water mark of transient memory), which the soak should be able to see
            per_batch = ((n - samples[-1]["events"]) / (batches - samples[-1]["batches"])
                         if samples and batches > samples[-1]["batches"] else None)
            samples.append({"t_s": round(time.monotonic() - t0, 1), "events": n, "batches": batches,
                            "records_per_batch": round(per_batch, 1) if per_batch is not None else None,
                            "worker_rss_mb": round(rss_mb(worker.pid), 1),
                            "broker_rss_mb": round(rss_mb(broker.proc.pid), 1) if broker.proc else None,
                            **rss_split_mb(worker.pid), **memory_parts(port)})
            print(json.dumps(samples[-1]), flush=True)
    finally:
        for p in (sim, worker):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        broker.stop()

    warm = samples[int(len(samples) * args.warmup):]
    ev = [s["events"] / 1e6 for s in warm]
    rss = [s["worker_rss_mb"] for s in warm]
    per_m = slope(ev, rss)
    half = slope_halfwidth(ev, rss)
    growth = (rss[-1] - rss[0]) / rss[0] if rss and rss[0] else None
    # where the growth went: the same slope for every part of the worker's memory it reports
    parts = sorted({k for s in warm for k in s if k.endswith("_mb") and k not in ("worker_rss_mb", "broker_rss_mb")})
    part_slopes = {k: round(slope([s["events"] / 1e6 for s in warm if s.get(k) is not None],
                                  [s[k] for s in warm if s.get(k) is not None]), 2)
                   for k in parts if sum(s.get(k) is not None for s in warm) > 1}
    # the view's bounds: its change log is full once it was first trimmed (it drops by half)
    log = [(s["events"], s.get("view_change_log_entries")) for s in samples]
    trimmed_at = next((e for (_, a), (e, b) in zip(log, log[1:]) if a is not None and b is not None and b < a), None)
    # thirds of the run after the warm-up: a leak rises third by third; a bound still being reached
    # (records per batch as the embedded broker slows) moves with its cause
    def thirds(key: str) -> list[float | None]:
        parts = [warm[i * len(warm) // 3:(i + 1) * len(warm) // 3] for i in range(3)]
        return [round(sum(v) / len(v), 1) if (v := [x[key] for x in part if x.get(key) is not None]) else None
                for part in parts]

    blocks = [(s["events"] / 1e6, s["python_blocks"]) for s in warm if s.get("python_blocks") is not None]
    result = {
        "rss_thirds_mb": thirds("worker_rss_mb"), "records_per_batch_thirds": thirds("records_per_batch"),
        "python_blocks_thirds": thirds("python_blocks"),
        "slope_at_fixed_batch": slope_at_fixed_batch(warm),
        "python_blocks_per_million_events": round(slope(*zip(*blocks))) if len(blocks) > 1 else None,
        "hotspot_baselines_thirds": thirds("hotspot_baselines"),
        "minutes": args.minutes, "rate": args.rate, "max_poll_records": args.max_poll_records or None, "subscribers": args.subscribers,
        "partitions": args.partitions, "events": samples[-1]["events"] if samples else 0,
        "rss_after_warmup_mb": rss[0] if rss else None, "rss_end_mb": rss[-1] if rss else None,
        "rss_max_mb": max(s["worker_rss_mb"] for s in samples) if samples else None,
        "warmup": round(args.warmup, 3), "slope_mb_per_million_events": round(per_m, 2),
        "slope_95_halfwidth_mb_per_million_events": round(half, 2) if half is not None else None,
        "part_slopes_mb_per_million_events": part_slopes,
        "view_change_log_first_trimmed_at_events": trimmed_at,
        "warmup_ends_at_events": warm[0]["events"] if warm else None,
        "growth_after_warmup": round(growth, 4) if growth is not None else None,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "samples": samples,
    }
    if args.trace or args.census:
        result["trace"] = trace_report(trace_dir, args.warmup)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)   # kept (logs, snapshots) only when the run failed
    print(f"soak: {result['events']:,.0f} events in {args.minutes:g} min; worker RSS after warm-up "
          f"{result['rss_after_warmup_mb']} MB, at the end {result['rss_end_mb']} MB, max {result['rss_max_mb']} MB; "
          f"slope {per_m:+.2f}{f' ± {half:.2f}' if half is not None else ''} MB per million events "
          f"-> {args.out}")
    if trimmed_at is None or (warm and trimmed_at > warm[0]["events"]):
        print(f"note: the outreach view's change log (bounded per partition) was still filling after the warm-up "
              f"(first trimmed at {trimmed_at or 'never'} events): part of the slope is that bound being reached")
    print("by part (MB per million events): " + ", ".join(f"{k[:-3]} {v:+.2f}" for k, v in part_slopes.items()))
    print(f"by thirds after the warm-up: RSS {result['rss_thirds_mb']} MB, records per batch "
          f"{result['records_per_batch_thirds']}, Python blocks {result['python_blocks_thirds']} "
          f"({result['python_blocks_per_million_events']} per million events), hot-spot baselines "
          f"{result['hotspot_baselines_thirds']}")
    if result["slope_at_fixed_batch"]:
        f = result["slope_at_fixed_batch"]
        print(f"at a fixed batch size: {f['mb_per_million_events']:+.2f} MB per million events "
              f"({f['mb_per_100_records_per_batch']:+.2f} MB per 100 more records per batch)")
    t = result.get("trace", {})
    if "samples" in t:
        a, b = t["samples"][int(t["from"])], t["samples"][-1]
        print("from the end of the warm-up: " + ", ".join(f"{k} {a[k]} -> {b[k]}" for k in b if k in a))
    for row in t.get("top_growth", [])[:12]:
        print(f"  {row['size_diff_kb']:+10.1f} KB {row['count_diff']:+9d} blocks  {row['where']}")
    if "types_grown" in t:
        print("objects grown by type: " + ", ".join(f"{k} {v:+d}" for k, v in list(t["types_grown"].items())[:12]))
        for row in t["containers_grown"][:12]:
            print(f"  {row['type']} {row['len_before']} -> {row['len']}  held by {row['held_by']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
