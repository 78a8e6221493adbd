"""``satmon demo``: the live local demo — embedded broker, workers, simulated traffic with incidents,
Prometheus and Alertmanager (when installed), the API and the outreach page.

The simulator starts ``--history`` (default 80 min) in the past with the ``demo`` scenario, whose
incidents are placed so that by the time that history is processed there are active hot spots, a
degraded region, data and concept drift, labels for the model-quality panels, and at-risk lists;
then it follows the wall clock. Once the workers have processed the history and exported the
gauges that come from timers, the demo prints :data:`HISTORY_DONE` (tests wait for that line).

Everything runs on loopback and is stopped on Ctrl-C (or after ``--duration`` seconds). With
``SATMON_BROKER`` set it uses that Kafka instead of starting the embedded broker.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HELP = "live local demo: embedded broker, workers, simulated traffic with incidents, metrics, API"

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_BIN = "/usr/bin/prometheus"
#: printed once the history is processed and the dashboards have data
HISTORY_DONE = "history replayed"
#: local hour of day of the demo's *now* (see :func:`afternoon_offset_h`)
AFTERNOON = 15
#: how often the demo's workers checkpoint (the default 30 s would leave the checkpoint panels
#: empty for the first half minute)
DEMO_CHECKPOINT_INTERVAL_S = "10"
ALERTMANAGER_BIN = "/usr/bin/prometheus-alertmanager"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from monitor.config import add_flags

    add_flags(parser, ("broker", "data_dir", "partitions", "log_level"))
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--subscribers", type=int, default=20_000, help="simulated subscribers (default 20000)")
    parser.add_argument("--rate", type=float, default=2_000, help="simulated events per second (default 2000)")
    parser.add_argument("--scenario", default="demo", help="simulator scenario (default: demo)")
    parser.add_argument("--history", default="80m",
                        help="simulated history sent before going live, e.g. 80m, 1h30m; 0 = none (default 80m)")
    parser.add_argument("--duration", type=float, default=0, help="stop after this many seconds (0 = until Ctrl-C)")
    parser.add_argument("--web-port", type=int, default=6066, help="first worker's HTTP port (default 6066)")
    parser.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus/Alertmanager")


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free port")


def afternoon_offset_h(now_s: float, local_hour: int = AFTERNOON) -> int:
    """Whole hours to add to UTC so that ``now_s`` falls in the hour ``local_hour`` where the demo's
    subscribers live, in -12..11: the simulator's daily load curve follows their local time, and
    at its night trough a region's traffic is too thin for its drift and hot-spot windows (the demo
    run at 03:00 UTC showed no data drift), so the demo looks the same at any hour."""
    return (local_hour - time.gmtime(now_s).tm_hour + 12) % 24 - 12


def _wait_http(url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status < 500:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


class _Procs:
    """Child processes, stopped in reverse order of start."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.children.append((name, proc))
        return proc

    def dead(self) -> list[str]:
        return [name for name, p in self.children if p.poll() is not None]

    def stop_all(self) -> None:
        for _name, proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _name, proc in reversed(self.children):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def scrape(port: int) -> dict[str, float]:
    """``{metric name: sum over its series}`` from a worker's /metrics (empty if unreachable)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            name = name.split("{", 1)[0]
            try:
                out[name] = out.get(name, 0.0) + float(value)
            except ValueError:
                pass
    return out


#: seconds without a new cell-window batch or alert after which the hot-spot stage is caught up
STAGE_SETTLED_S = 5.0
#: gauges exported by timers (every 10-15 s), not per batch: the history is "in" once they exist. Not
#: the model-quality gauges: a snapshot becomes a label 24 h after it (monitor.scoring.risk), so 80 minutes
#: of history hold none and those gauges come only a simulated day later
_TIMER_GAUGES = ("satmon_risk_at_risk_subscribers", "satmon_risk_band_subscribers")


def _wait_history(sim_log: Path, log_start: int, ports: list[int], procs: _Procs, stop: dict[str, bool],
                  timeout_s: float = 300) -> int | None:
    """Wait for the simulator to send the history, the workers to process it and the timer gauges
    to appear; returns the records of history, or None on timeout / stop / a dead child."""
    from monitor.commands.simulate import CAUGHT_UP

    deadline = time.monotonic() + timeout_s
    sent = None
    # the hot-spot stage consumes satmon-cell-windows behind the input: its backlog is drained once
    # its counters stop moving (live, a window closes once a minute)
    settled: tuple[float, float] | None = None
    settled_since = 0.0
    while not stop["now"] and not procs.dead() and time.monotonic() < deadline:
        if sent is None and sim_log.exists():
            with sim_log.open("rb") as f:
                f.seek(log_start)
                for line in f.read().decode(errors="replace").splitlines():
                    if line.startswith(CAUGHT_UP):
                        sent = int(line.split(":", 1)[1].split()[0])
        if sent is not None:
            scraped = [scrape(p) for p in ports]
            done = sum(m.get("satmon_ingest_events_decoded_total", 0) + m.get("satmon_ingest_records_dead_lettered_total", 0)
                       for m in scraped)
            stage = (sum(m.get("satmon_worker_window_batches_total", 0) for m in scraped),
                     sum(m.get("satmon_worker_alerts_total", 0) for m in scraped))
            if stage != settled:
                settled, settled_since = stage, time.monotonic()
            if (done >= sent and all(any(g in m for m in scraped) for g in _TIMER_GAUGES) and stage[0] > 0
                    and time.monotonic() - settled_since >= STAGE_SETTLED_S):
                return sent
        time.sleep(1)
    return None


#: the network faults the demo's simulator injects (its ground truth), written under the demo's root
INJECTED_FILE = "injected.json"


def write_injected(path: Path, args: argparse.Namespace, offset_h: int) -> list[dict]:
    """Write the network faults the simulator is about to inject (cell and regional incidents and KPI
    drifts, as ``satmon simulate --out`` writes them in ``ground_truth/incidents.json``) to ``path``;
    returns them. The simulator resolves the same scenario with the same seed and world, so the cells
    are exact; its start is taken here, just before it is launched, so onsets are early by its
    start-up (about a second). What the NOC should see, and what tests/test_demo.py checks."""
    import json

    from monitor.sim import simulate

    start_ms = int(time.time() * 1000)
    if args.history not in ("", "0"):
        start_ms -= simulate.duration_ms(args.history, "--history")
    truth = simulate.Simulator(simulate.SimConfig(subscribers=args.subscribers, hours=0, scenario=args.scenario,
                                                  start_ms=start_ms, utc_offset_h=offset_h)).incidents_json()
    network = [r for r in truth["incidents"] + truth["drifts"] if r["scope"] in ("cell", "region")]
    path.write_text(json.dumps({"start_ms": start_ms, "faults": network}, indent=1) + "\n")
    return network


def _describe(rec: dict) -> str:
    where = rec.get("region") or ", ".join(rec["regions"])
    cells = f", {len(rec['cells'])} cells ({', '.join(rec['cells'])})" if rec["cells"] else ""
    onset = time.strftime("%H:%M", time.gmtime(rec["onset_ms"] / 1000))
    until = f" to {time.strftime('%H:%M', time.gmtime(rec['end_ms'] / 1000))}" if rec["end_ms"] else ""
    return f"{rec['id']} ({rec['type']}): {where}{cells}, {onset}{until} UTC"


def _prometheus_config(path: Path, worker_ports: list[int], am_port: int | None) -> None:
    rules = sorted((REPO / "deploy" / "prometheus" / "rules").glob("*.yml"))
    lines = ["global:", "  scrape_interval: 5s", "  evaluation_interval: 5s"]
    if rules:
        lines.append("rule_files:")
        lines += [f"  - {r}" for r in rules]
    if am_port:
        lines += ["alerting:", "  alertmanagers:", "    - static_configs:", f"        - targets: ['127.0.0.1:{am_port}']"]
    lines += ["scrape_configs:", "  - job_name: satmon", "    static_configs:", "      - targets:"]
    lines += [f"          - 127.0.0.1:{p}" for p in worker_ports]
    path.write_text("\n".join(lines) + "\n")


def run(args: argparse.Namespace) -> int:
    from monitor.config import from_args
    from monitor.outreach.privacy import ensure_demo_tokens, ensure_key_file

    settings = from_args(args)
    root = settings.data_dir.resolve() / "demo"
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = _Procs(logs)
    broker = None
    stop = {"now": False}

    def _on_signal(signum: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        if settings.broker is None:
            from monitor.worker.broker import EmbeddedBroker

            broker = EmbeddedBroker(data_dir=root, partitions=settings.partitions)
            url = broker.start()
            # A fresh embedded broker has no changelogs: any local worker state would be stale.
            shutil.rmtree(root / "workers", ignore_errors=True)
        else:
            url = settings.broker
        from monitor.worker.kafka import create_topics

        create_topics(url, settings.partitions)
        key_file = ensure_key_file(root / "pseudonym.key")
        tokens = ensure_demo_tokens(root / "tokens.json")

        am_port = None
        if not args.no_prometheus and os.access(ALERTMANAGER_BIN, os.X_OK):
            am_port = _free_port(9093)
            am_cfg = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
            if not am_cfg.exists():
                am_cfg = root / "alertmanager.yml"
                am_cfg.write_text("route:\n  receiver: log\nreceivers:\n  - name: log\n")
            procs.start("alertmanager", [ALERTMANAGER_BIN, f"--config.file={am_cfg}",
                                         f"--storage.path={root / 'alertmanager'}",
                                         f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="])

        env = dict(os.environ)
        env.setdefault("SATMON_CHECKPOINT_INTERVAL_S", DEMO_CHECKPOINT_INTERVAL_S)
        # the simulated network's cell inventory, so active hot spots show on the geo map
        from monitor.sim import simulate

        cells_file = root / "cells.json"
        simulate.write_cells(simulate.SimConfig(subscribers=args.subscribers, hours=0, scenario=args.scenario),
                             cells_file)
        env.setdefault("SATMON_CELL_INVENTORY", str(cells_file))
        env.update({"SATMON_BROKER": url, "SATMON_PARTITIONS": str(settings.partitions),
                    "SATMON_PSEUDONYM_KEY_FILE": str(key_file), "SATMON_TOKENS_FILE": str(root / "tokens.json"),
                    "SATMON_LOG_LEVEL": settings.log_level})
        if am_port:
            env["SATMON_ALERTMANAGER_URL"] = f"http://127.0.0.1:{am_port}"
        satmon = [sys.executable, "-m", "monitor"]
        ports = []
        for i in range(args.workers):
            port = _free_port(args.web_port + i)
            ports.append(port)
            wenv = dict(env, SATMON_WEB_PORT=str(port), SATMON_WORKER_ID=f"demo-{i}",
                        SATMON_DATA_DIR=str(root / "workers" / f"w{i}"))
            procs.start(f"worker-{i}", satmon + ["worker"], wenv)

        prom_port = None
        if not args.no_prometheus and os.access(PROMETHEUS_BIN, os.X_OK):
            prom_port = _free_port(9090)
            cfg = root / "prometheus.yml"
            _prometheus_config(cfg, ports, am_port)
            procs.start("prometheus", [PROMETHEUS_BIN, f"--config.file={cfg}",
                                       f"--storage.tsdb.path={root / 'prometheus'}",
                                       f"--web.listen-address=127.0.0.1:{prom_port}"])

        for port in ports:
            if not _wait_http(f"http://127.0.0.1:{port}/healthz", 90):
                print(f"worker on port {port} did not come up: see {logs}", file=sys.stderr)
                return 1
        history = [] if args.history in ("", "0") else ["--history", args.history]
        sim_log = logs / "simulator.log"
        sim_log_start = sim_log.stat().st_size if sim_log.exists() else 0
        offset_h = afternoon_offset_h(time.time())
        injected = write_injected(root / INJECTED_FILE, args, offset_h)
        procs.start("simulator", satmon + ["simulate", "--broker", url, "--start", "now", "--rate", str(args.rate),
                                           "--subscribers", str(args.subscribers), "--scenario", args.scenario,
                                           "--utc-offset-h", str(offset_h),
                                           "--loop", *history], env)

        print("\nsatmon demo is running (Ctrl-C stops it)\n")
        print(f"  broker            {url}" + ("  (embedded Tansu, memory only)" if broker else ""))
        for i, port in enumerate(ports):
            print(f"  worker {i}          http://127.0.0.1:{port}/metrics   /readyz   /api/v1/at-risk")
        print(f"  outreach page     http://127.0.0.1:{ports[0]}/ui/")
        if prom_port:
            print(f"  Prometheus        http://127.0.0.1:{prom_port}/   (alerts: /alerts)")
        if am_port:
            print(f"  Alertmanager      http://127.0.0.1:{am_port}/")
        print(f"  simulated time    subscribers at UTC{offset_h:+d}: mid-afternoon for them now, the day's load")
        for rec in injected:
            print(f"  injected          {_describe(rec)}")
        print(f"  API tokens        {', '.join(f'{k}={v}' for k, v in tokens.items())}")
        print(f"  example           satmon at-risk --url http://127.0.0.1:{ports[0]} --limit 20 --format csv"
              f"  (with SATMON_TOKEN={tokens.get('outreach', '')})")
        print(f"  logs              {logs}\n", flush=True)

        started = time.monotonic()
        if history:
            print(f"replaying {args.history} of history (the demo scenario's incidents) ...", flush=True)
            done = _wait_history(sim_log, sim_log_start, ports, procs, stop)
            if done is not None:
                print(f"{HISTORY_DONE}: {done} records; hot spots, drift and model quality are on /metrics "
                      "and in Prometheus", flush=True)
        while not stop["now"]:
            if args.duration and time.monotonic() - started >= args.duration:
                break
            dead = procs.dead()
            if dead:
                print(f"stopped: {', '.join(dead)} exited; see {logs}", file=sys.stderr)
                return 1
            time.sleep(0.5)
        return 0
    finally:
        procs.stop_all()
        if broker is not None:
            broker.stop()
