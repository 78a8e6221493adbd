"""Does the API stall the stream? ``/healthz`` latency while the API is saturated, on a real worker.

Starts the embedded broker and one ``satmon worker`` (with the outreach API), writes ``--scores``
at-risk ``risk_score.v1`` records to ``risk-scores`` (what the worker's view serves) and waits until
the view holds them all. Then, for ``--seconds``, ``--concurrency`` clients (two tokens) each send
``GET /api/v1/at-risk?limit=500`` back to back -- issue 21's probe -- while a prober asks
``/healthz`` every 50 ms and a producer feeds ``--rate`` network events per second to the input
topic. Reported: healthz p50/p99/max under load (and idle before it), the list requests' status
codes and latencies, and the input events the worker processed during the load.

Each configuration runs on a fresh broker and worker: ``api_max_concurrency`` 1 (the default: the
API's work in one thread off the event loop), 2 (two threads) and 0 (computed on the event loop, as
before issue 21: the comparison). Writes ``benchmarks/api-load.json``.

    python benchmarks/bench_api_load.py --configs 1,2,0   # ~3 minutes
    python benchmarks/bench_api_load.py --seconds 10 --scores 5000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from monitor.worker.broker import EmbeddedBroker, free_port  # noqa: E402
from monitor.records.events import Reason, RiskScore, encode  # noqa: E402

TOKENS = {"outreach-a": "bench-outreach-token-a-0123456789", "outreach-b": "bench-outreach-token-b-0123456789"}
PARTITIONS = 4


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 2)


def _summary(values_ms: list[float]) -> dict:
    return {"n": len(values_ms), "p50_ms": _pct(values_ms, 0.5), "p99_ms": _pct(values_ms, 0.99),
            "max_ms": round(max(values_ms), 2) if values_ms else None}


async def _produce_scores(bootstrap: str, n: int) -> None:
    from aiokafka import AIOKafkaProducer

    rng = random.Random(7)
    now = int(time.time() * 1000)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    try:
        futures = []
        for i in range(n):
            sid = f"s{i:07d}"
            rec = RiskScore(subscriber_id=sid, ts_ms=now - i, scored_at_ms=now, score=round(rng.uniform(0.5, 1.0), 4),
                            at_risk=True, model_version=1, region=("north", "south", "east", "west")[i % 4],
                            segment=("consumer", "business")[i % 2], cell_id=f"c{i % 200:03d}",
                            reasons=[Reason(code="stalls", text="41 s video stall", contribution=0.3, value=41.0)])
            futures.append(await producer.send("risk-scores", encode(rec), key=sid.encode()))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _feed_events(bootstrap: str, rate: float, stop: asyncio.Event) -> int:
    """Network events at ``rate`` per second until ``stop``: the stream the API must not stall."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    sent, t0 = 0, time.monotonic()
    try:
        while not stop.is_set():
            now = int(time.time() * 1000)
            for _ in range(int(rate / 20)):
                sid = f"e{sent % 5000:05d}"
                ev = {"event_id": f"ev{sent}", "subscriber_id": sid, "ts_ms": now, "cell_id": f"c{sent % 200:03d}",
                      "region": "north", "radio": "4G", "service": "web", "rsrp_dbm": -100.0, "sinr_db": 5.0,
                      "dl_mbps": 10.0, "ul_mbps": 2.0, "latency_ms": 40.0, "jitter_ms": 5.0, "packet_loss_pct": 0.2,
                      "call_drop": False, "video_stall_s": 0.0}
                await producer.send("network-events", json.dumps(ev).encode(), key=sid.encode())
                sent += 1
            await asyncio.sleep(max(0.0, t0 + sent / rate - time.monotonic()))
        await producer.flush()
    finally:
        await producer.stop()
    return sent


def _get(url: str, token: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError:
        return 0, b""


def _events_processed(port: int) -> float:
    status, body = _get(f"http://127.0.0.1:{port}/metrics")
    return sum(float(line.rpartition(" ")[2]) for line in body.decode().splitlines()
               if line.startswith("satmon_ingest_events_decoded_total{"))


async def _load(port: int, concurrency: int, seconds: float) -> dict:
    import aiohttp

    base = f"http://127.0.0.1:{port}"
    codes: dict[int, int] = {}
    list_ms: list[float] = []
    health_ms: list[float] = []
    deadline = time.monotonic() + seconds
    tokens = list(TOKENS.values())

    async def client(i: int, session: aiohttp.ClientSession) -> None:
        headers = {"Authorization": f"Bearer {tokens[i % 2]}"}
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                async with session.get(f"{base}/api/v1/at-risk", params={"limit": "500"}, headers=headers) as resp:
                    await resp.read()
                    codes[resp.status] = codes.get(resp.status, 0) + 1
                    if resp.status == 200:
                        list_ms.append((time.perf_counter() - t0) * 1000)
            except aiohttp.ClientError:
                codes[0] = codes.get(0, 0) + 1

    async def prober(session: aiohttp.ClientSession) -> None:
        await asyncio.sleep(0.5)   # let the clients pile up first
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            async with session.get(f"{base}/healthz") as resp:
                await resp.read()
            health_ms.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(0.05)

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session, aiohttp.ClientSession() as probe_session:
        await asyncio.gather(prober(probe_session), *(client(i, session) for i in range(concurrency)))
    return {"healthz_under_load": _summary(health_ms), "list_requests": {"codes": codes, **_summary(list_ms)}}


def run_one(api_max_concurrency: int, args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="satmon-apiload-"))
    broker = EmbeddedBroker(data_dir=work / "broker", partitions=PARTITIONS)
    broker.start()
    tokens_file = work / "tokens.json"
    tokens_file.write_text(json.dumps({name: {"token": t, "role": "outreach"} for name, t in TOKENS.items()}))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SATMON_") or k == "SATMON_TANSU_BIN"}
    # a generous per-token rate limit: the point is a saturated API, not 429s
    env.update(SATMON_RATE_PER_S="10000", SATMON_RATE_BURST="10000", SATMON_API_MAX_CONCURRENCY=str(api_max_concurrency))
    log = open(work / "worker.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "monitor", "worker", "--broker", broker.url, "--store", "memory://",
                             "--data-dir", str(work), "--web-port", str(port), "--partitions", str(PARTITIONS),
                             "--pseudonymise", "false", "--tokens-file", str(tokens_file), "--log-level", "WARNING"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(HERE.parent))
    try:
        asyncio.run(_produce_scores(broker.bootstrap, args.scores))
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            status, body = _get(f"http://127.0.0.1:{port}/api/v1/summary", TOKENS["outreach-a"])
            if status == 200 and json.loads(body)["subscribers"] >= args.scores:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited: {(work / 'worker.log').read_text()[-3000:]}")
            time.sleep(0.5)
        else:
            raise RuntimeError("the worker's view did not catch up")
        idle = []
        for _ in range(40):
            t0 = time.perf_counter()
            _get(f"http://127.0.0.1:{port}/healthz")
            idle.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.05)

        async def loaded() -> tuple[dict, int]:
            stop = asyncio.Event()
            feeder = asyncio.create_task(_feed_events(broker.bootstrap, args.rate, stop))
            await asyncio.sleep(2.0)  # the stream is flowing before the API load starts
            before = _events_processed(port)
            t0 = time.monotonic()
            result = await _load(port, args.concurrency, args.seconds)
            elapsed = time.monotonic() - t0
            after = _events_processed(port)
            stop.set()
            sent = await feeder
            result["stream"] = {"input_rate_per_s": args.rate, "events_processed_during_load": after - before,
                                "processed_per_s_during_load": round((after - before) / elapsed, 1), "sent": sent}
            return result, sent

        result, _ = asyncio.run(loaded())
        return {"api_max_concurrency": api_max_concurrency, "healthz_idle": _summary(idle), **result}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scores", type=int, default=20_000, help="at-risk subscribers in the view (default 20000)")
    ap.add_argument("--concurrency", type=int, default=200, help="concurrent list clients (default 200)")
    ap.add_argument("--seconds", type=float, default=20.0, help="load duration per configuration (default 20)")
    ap.add_argument("--rate", type=float, default=500.0, help="input events per second during the load (default 500)")
    ap.add_argument("--configs", default="1,2,0", help="api_max_concurrency values to run (default 1,2,0)")
    ap.add_argument("--out", default=str(HERE / "api-load.json"))
    args = ap.parse_args()
    runs = [run_one(int(c), args) for c in args.configs.split(",")]
    out = {"benchmark": "api-load", "command": "python benchmarks/bench_api_load.py " + " ".join(sys.argv[1:]),
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "note": "2 cores shared with other jobs: absolute figures are noisy"},
           "scores": args.scores, "concurrency": args.concurrency, "seconds": args.seconds,
           "request": "GET /api/v1/at-risk?limit=500 (two tokens)", "runs": runs}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
