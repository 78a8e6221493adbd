"""Real Alertmanagers for the tests: :class:`Alertmanager` (a minimal route, read back through its
API) and :func:`repo_alertmanager` (the repository's configuration, receivers on a local webhook)."""

from __future__ import annotations

import contextlib
import http.server
import json
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from support.kafka import ROOT, free_port

AM_BIN = "/usr/bin/prometheus-alertmanager"
AM_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
ALERTMANAGER = shutil.which("prometheus-alertmanager") or AM_BIN

CONFIG = """\
route:
  receiver: "null"
  group_wait: 1s
receivers:
  - name: "null"
"""


class Alertmanager:
    def __init__(self, tmp: Path, port: int) -> None:
        self.tmp, self.port = tmp, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cfg = self.tmp / "am.yml"
        cfg.write_text(CONFIG)
        (self.tmp / "data").mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [AM_BIN, f"--config.file={cfg}", f"--storage.path={self.tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=open(self.tmp / "am.log", "ab"))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("alertmanager did not become ready:\n" + (self.tmp / "am.log").read_text())

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def alerts(self, **filters: str) -> list[dict]:
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=2) as r:
            data = json.load(r)
        return [a for a in data if all(a["labels"].get(k) == v for k, v in filters.items())]


class Webhook(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, dict]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.append((self.path, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def repo_alertmanager(tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager on the repository's ``deploy/alertmanager/alertmanager.yml``, its receivers
    pointed at a local :class:`Webhook` and its timers shortened; yields its URL."""
    if not Path(ALERTMANAGER).exists():
        pytest.skip("prometheus-alertmanager not installed")
    Webhook.received = []
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    cfg = yaml.safe_load(AM_CONFIG.read_text())
    for rec in cfg["receivers"]:
        for wh in rec.get("webhook_configs", []):
            wh["url"] = f"http://127.0.0.1:{hook.server_address[1]}/{rec['name']}"

    def shorten(route: dict) -> None:
        for key in ("group_wait", "group_interval"):
            if key in route or route is cfg["route"]:
                route[key] = "1s"
        for child in route.get("routes", []):
            shorten(child)

    shorten(cfg["route"])
    (tmp_path / "am.yml").write_text(yaml.safe_dump(cfg))
    port = free_port()
    proc = subprocess.Popen([ALERTMANAGER, f"--config.file={tmp_path / 'am.yml'}",
                             f"--storage.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--cluster.listen-address="], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("alertmanager did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        hook.shutdown()
        hook.server_close()
