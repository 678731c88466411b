"""The parent's restart policy, decided from a worker's exit code and how long it ran."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import structlog

from proxy import logs
from proxy.config import Config
from proxy.reconfig import Recipe
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


def test_a_reload_masks_the_new_keys_in_the_parents_own_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With managed models the parent writes their vLLM's output lines to the log."""
    config = tmp_path / "config.yaml"
    config.write_text("backends: [{url: http://127.0.0.1:1}]\n")
    recipe = Recipe(path=str(config))
    root = logging.getLogger()
    handlers = list(root.handlers)
    logs.configure("info", "json", recipe.build({}).secrets())
    try:
        supervisor = Supervisor(recipe.build({}), 2, recipe)
        config.write_text('backends: [{url: http://127.0.0.1:1}]\napi_keys: [{name: a, key: "parent-key-5678"}]\n')
        supervisor._reload()
        structlog.get_logger("proxy.vllm").info("vLLM output", line="token parent-key-5678 echoed")
        out = capsys.readouterr().out
    finally:  # the process-wide logging set-up back as the other tests expect it
        structlog.reset_defaults()
        root.handlers[:] = handlers
    assert "echoed" in out and "parent-key-5678" not in out
