"""SIGTERM while the proxy is still starting (its first discovery is under way), as real
processes: it still stops what it started (managed vLLM children, its connections) and
exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.helpers import REPO, free_port, until
from tests.integration.test_service import NotifySocket
from tests.procs import launched


class Silent:
    """A backend that accepts connections and never answers: discovery waits on it."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen()
        self._sock.setblocking(False)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []

    def accept(self) -> int:
        while True:
            try:
                conn, _ = self._sock.accept()
            except BlockingIOError:
                return len(self.conns)
            conn.setblocking(False)
            self.conns.append(conn)

    def open(self) -> int:
        """How many accepted connections the other side has not closed yet."""
        count = 0
        for conn in self.conns:
            try:
                while conn.recv(65536):  # the request it sent, then the end
                    pass
            except BlockingIOError:
                count += 1
            except OSError:
                pass
        return count

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self._sock.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    backend = Silent()
    yield backend
    backend.close()


@pytest.mark.parametrize("workers", [1, 2], ids=["one-worker", "two-workers"])
async def test_sigterm_during_the_first_discovery_stops_everything_and_exits_0(
    tmp_path: Path, silent: Silent, workers: int
) -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    command = [sys.executable, "-m", "tests.fakes.vllm_server", "--marker", marker]
    config = {"log_format": "json", "backends": [{"url": silent.url}], "timeouts": {"discovery": 60},
              "models": [{"name": "tiny", "launch": {"model": "fake/tiny", "command": command, "preload": True,
                                                     "env": {"PYTHONPATH": str(REPO)}}}]}  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    notify = NotifySocket()
    cmd = [sys.executable, "-m", "proxy", "serve", "--config", str(tmp_path / "c.yaml"),
           "--listen", f"127.0.0.1:{free_port()}", "--workers", str(workers)]  # fmt: skip
    env = {**os.environ, "OLLAMA_HOST": "", "NOTIFY_SOCKET": notify.address}
    with (tmp_path / "proxy.log").open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        await until(lambda: silent.accept() >= workers, timeout=30)  # every worker's discovery is waiting
        if workers > 1:  # the parent owns the managed models and preloads them at once
            await until(lambda: launched(lambda argv: marker.encode() in argv), timeout=30)
        await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        await until(lambda: proc.poll() is not None, timeout=30)
        text = (tmp_path / "proxy.log").read_text()
        assert proc.returncode == 0, text
        assert launched(lambda argv: marker.encode() in argv) == [], text
        assert silent.open() == 0
        assert notify.states() == ["STOPPING=1"], text
        assert "Traceback" not in text
    finally:
        notify.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in launched(lambda argv: marker.encode() in argv):
            os.kill(pid, signal.SIGKILL)
