"""Headless Chromium for the page's tests (Debian's ``/usr/bin/chromium`` driven by the Python
``playwright`` package; its browser download is never used): :func:`chromium`, :func:`login`, and
:func:`serve` to run an API on a free port. The ``browser`` fixture is in ``tests/conftest.py``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

CHROMIUM = os.environ.get("SATMON_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A launched headless Chromium (skips the test when playwright is not installed)."""
    import pytest

    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@contextlib.contextmanager
def serve(app):
    """Run ``app`` on a free port in a background thread; yield its base URL."""
    from aiohttp import web

    box: dict[str, Any] = {}
    started = threading.Event()

    def run():
        async def main():
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            box.update(port=runner.addresses[0][1], stop=asyncio.Event(), loop=asyncio.get_running_loop())
            started.set()
            await box["stop"].wait()
            await runner.cleanup()

        asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10), "server did not start"
    try:
        yield f"http://127.0.0.1:{box['port']}"
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(10)


def login(page, url: str, token: str) -> None:
    page.goto(f"{url}/ui/")
    page.fill("#token", token)
    page.click("#login-form button[type=submit]")
