"""The parent's restart policy, decided from a worker's exit code and how long it ran."""

from __future__ import annotations

import os
import threading
from types import SimpleNamespace

import pytest

from proxy.config import Config
from proxy.workers import EXIT_CANNOT_LISTEN, Supervisor, _Slot, watch_eof


def exits(supervisor: Supervisor, slot: _Slot, history: list[tuple[float, int]]) -> list[float | None]:
    """Feed exits (seconds the worker ran, exit code); the restart delay after each, None = give up."""
    delays: list[float | None] = []
    now = 1000.0
    for ran, code in history:
        slot.started, slot.proc = now, SimpleNamespace(pid=42, returncode=code, stdin=None)  # type: ignore[assignment]
        now += ran
        delays.append(slot.restart_at - now if supervisor._exited(slot, now) and slot.restart_at else None)
    return delays


@pytest.mark.parametrize(
    ("history", "delays"),
    [
        pytest.param([(3600, -9)], [0.5], id="killed after an hour: back in 0.5 s"),
        pytest.param([(3600, 0)], [0.5], id="a clean exit nobody asked for is restarted too"),
        pytest.param([(1, 1), (1, 1), (1, 1), (1, 1), (1, 1)], [0.5, 1, 2, 4, None], id="crash loop: backoff, then give up"),
        pytest.param([(1, 1), (1, 1), (60, 1), (1, 1)], [0.5, 1, 0.5, 1], id="a stable run resets the backoff"),
        pytest.param([(20, -11)] * 8, [0.5] * 8, id="crashes long after start never give up"),
        pytest.param([(0.5, EXIT_CANNOT_LISTEN)], [None], id="cannot listen: no restart"),
    ],
)
def test_restart_policy(history: list[tuple[float, int]], delays: list[float | None]) -> None:
    supervisor = Supervisor(Config(), 2)
    assert exits(supervisor, _Slot("worker-0"), history) == delays


def test_the_pipe_watch_fires_when_the_parent_end_closes() -> None:
    read, write = os.pipe()
    fired = threading.Event()
    watcher = threading.Thread(target=watch_eof, args=(read, fired.set), daemon=True)
    watcher.start()
    os.write(write, b"ignored bytes")
    assert not fired.wait(0.05)
    os.close(write)  # what the kernel does when the parent dies
    assert fired.wait(5)
    os.close(read)
