"""Issue 21's done-when, probed on a running demo as an outsider would: Faust's pages, a far-future
event, lifting a do-not-contact, /healthz during 200 concurrent list requests (default rate limits).

    satmon demo --no-prometheus --subscribers 5000 --history 10m --web-port 16066 > demo.log &
    python benchmarks/probe_demo.py demo.log 16066 [out.json]     # once the demo lists subscribers

It reads the broker URL and the tokens from the demo's banner; writes JSON (default
benchmarks/demo-probe.json).
"""
import asyncio, json, re, sys, time, urllib.request, urllib.error
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
out = open(sys.argv[1]).read()
broker = re.search(r"broker\s+kafka://(\S+)", out).group(1)
tokens = dict(re.findall(r"(noc|outreach|admin)=([\w-]+)", out))
base = f"http://127.0.0.1:{sys.argv[2]}"
def call(method, path, token=None, body=None):
    req = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={**({"Authorization": f"Bearer {token}"} if token else {}), "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)
res = {}
res["framework_pages"] = {p: call("GET", p)[0] for p in ("/table/subscriber-state/x/", "/table/risk-model/0/", "/router/topics", "/graph/", "/stats/", "/")}
res["server_header"] = call("GET", "/healthz")[2].get("Server")
# a far-future event
from aiokafka import AIOKafkaProducer, AIOKafkaConsumer, TopicPartition
ev = {"event_id": "probe-2099", "subscriber_id": "probe-future", "ts_ms": 4070908800000, "cell_id": "c1", "region": "north",
      "radio": "4G", "service": "web", "rsrp_dbm": -100.0, "sinr_db": 5.0, "dl_mbps": 10.0, "ul_mbps": 2.0, "latency_ms": 40.0,
      "jitter_ms": 5.0, "packet_loss_pct": 0.2, "call_drop": False, "video_stall_s": 0.0}
async def future():
    p = AIOKafkaProducer(bootstrap_servers=broker); await p.start()
    await (await p.send("network-events", json.dumps(ev).encode(), key=b"probe-future")); await p.stop()
    c = AIOKafkaConsumer(bootstrap_servers=broker, group_id=None, auto_offset_reset="earliest"); await c.start()
    c.assign([TopicPartition("satmon-dead-letter", 0)]); await c.seek_to_beginning()
    found, deadline = None, time.monotonic() + 30
    while found is None and time.monotonic() < deadline:
        for msgs in (await c.getmany(timeout_ms=500)).values():
            for m in msgs:
                d = json.loads(m.value)
                if "clock" in d["reason"]:
                    found = {"reason": d["reason"], "key": m.key.decode() if m.key else None, "field": d["field"]}
    await c.stop(); return found
res["far_future_dead_letter"] = asyncio.run(future())
# consent: pick a listed subscriber
st, body, _ = call("GET", "/api/v1/at-risk?limit=1", tokens["outreach"])
sid = json.loads(body)["rows"][0]["subscriber_id"]
res["consent"] = {
    "outreach_sets_dnc": call("POST", "/api/v1/consent", tokens["outreach"], {"subscriber_id": sid, "do_not_contact": True})[0],
    "outreach_lifts": call("POST", "/api/v1/consent", tokens["outreach"], {"subscriber_id": sid, "do_not_contact": False, "reason": "subscriber_request"})[0],
    "detail_after": call("GET", f"/api/v1/subscribers/{sid}", tokens["outreach"])[0],
    "admin_lifts_without_reason": call("POST", "/api/v1/consent", tokens["admin"], {"subscriber_id": sid, "do_not_contact": False})[0],
    "admin_lifts_with_reason": call("POST", "/api/v1/consent", tokens["admin"], {"subscriber_id": sid, "do_not_contact": False, "reason": "subscriber_request"})[0],
    "unknown_id": call("POST", "/api/v1/consent", tokens["admin"], {"subscriber_id": "never-seen-anywhere", "do_not_contact": True})[0],
}
# healthz under 200 concurrent list requests (two tokens)
async def load():
    import aiohttp
    health, codes, stop = [], {}, time.monotonic() + 15
    toks = [tokens["outreach"], tokens["admin"]]
    async def client(i, s):
        while time.monotonic() < stop:
            async with s.get(base + "/api/v1/at-risk", params={"limit": "500"}, headers={"Authorization": f"Bearer {toks[i % 2]}"}) as r:
                await r.read(); codes[r.status] = codes.get(r.status, 0) + 1
    async def probe(s):
        await asyncio.sleep(0.5)
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            async with s.get(base + "/healthz") as r: await r.read()
            health.append((time.perf_counter() - t0) * 1000); await asyncio.sleep(0.05)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s, aiohttp.ClientSession() as ps:
        await asyncio.gather(probe(ps), *(client(i, s) for i in range(200)))
    h = sorted(health)
    return {"codes": codes, "healthz_n": len(h), "p50_ms": round(h[len(h)//2], 1), "p99_ms": round(h[int(0.99*len(h))], 1), "max_ms": round(h[-1], 1)}
res["healthz_under_200_concurrent_lists"] = asyncio.run(load())
res["command"] = "python benchmarks/probe_demo.py " + " ".join(sys.argv[1:])
text = json.dumps(res, indent=1)
Path(sys.argv[3] if len(sys.argv) > 3 else Path(__file__).resolve().parent / "demo-probe.json").write_text(text + "\n")
print(text)
