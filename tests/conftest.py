"""Fixtures every test can use; the helpers behind them live in ``tests/support/``.

``broker`` (a fresh :class:`support.kafka.Broker`), ``workers`` (starts
:class:`support.kafka.WorkerProcess` es and kills whatever is still running at the end),
``browser`` (a headless Chromium per module, :func:`support.browser.chromium`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.kafka import Broker, WorkerProcess


@pytest.fixture
def broker() -> Iterator[Broker]:
    b = Broker().start()
    yield b
    b.stop()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def make(broker: Any, **kwargs: Any) -> WorkerProcess:
        kwargs.setdefault("data_dir", tmp_path)
        w = WorkerProcess(broker, **kwargs).start()
        started.append(w)
        return w

    yield make
    for w in started:
        if w.proc is not None and w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from support.browser import chromium

    with chromium() as b:
        yield b
