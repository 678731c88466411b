"""`serve --workers 2` as real processes: workers die with their parent, a worker that dies
is replaced, SIGHUP reloads every worker, and a worker that cannot start stops the service."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.fakes.vllm import FakeVLLM
from tests.integration.helpers import alive, descendants, free_port, listening, port_open, serve, stop, until, wait_until_up

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": False}


class Service:
    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc, self.port = proc, port
        self.base = f"http://127.0.0.1:{port}"

    def workers(self) -> set[int]:
        return alive(descendants(self.proc.pid))

    async def chat_ok(self) -> bool:
        async with aiohttp.ClientSession() as session, session.post(f"{self.base}/api/chat", json=CHAT) as reply:
            return reply.status == 200 and (await reply.json())["message"]["content"] == "Hello, world!"

    def output(self) -> str:
        return stop(self.proc)


def start(backend: str, port: int, workers: int = 2, notify: str = "") -> subprocess.Popen[bytes]:
    env = {"NOTIFY_SOCKET": notify} if notify else {}
    return serve("--backend", backend, "--listen", f"127.0.0.1:{port}", "--workers", str(workers), env=env)


def _received(sock: socket.socket) -> bytes:
    try:
        return sock.recv(4096)
    except BlockingIOError:
        return b""


@pytest.fixture
async def service(fake: FakeVLLM, tmp_path: Path) -> AsyncIterator[Service]:
    port = free_port()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # systemd's end of Type=notify
    notify.bind(str(tmp_path / "notify"))
    notify.setblocking(False)
    proc = start(fake.url, port, notify=str(tmp_path / "notify"))
    svc = Service(proc, port)
    try:
        await wait_until_up(f"{svc.base}/api/version", proc)
        # READY=1 comes from the parent once both workers listen: a test may then kill one.
        await until(lambda: b"READY=1" in _received(notify))
        workers = svc.workers()
        assert len(workers) == 2 and listening(workers, port) == workers
        yield svc
    finally:
        notify.close()
        left = svc.workers()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
        for pid in alive(left):
            os.kill(pid, signal.SIGKILL)


async def test_sigkill_of_the_parent_takes_every_worker_down(service: Service) -> None:
    workers = service.workers()
    assert await service.chat_ok()
    service.proc.kill()
    took = await until(lambda: not alive(workers))
    assert not port_open(service.port)
    print(f"workers gone {took:.2f} s after SIGKILL of the parent")  # the figure in the README


async def test_sighup_to_the_parent_reloads_every_worker_and_keeps_serving(service: Service) -> None:
    workers = service.workers()
    lines: list[bytes] = []
    assert service.proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(service.proc.stdout.readline, b"")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    service.proc.send_signal(signal.SIGHUP)
    for _ in range(4):
        assert await service.chat_ok()
    # A worker still starting when SIGHUP came reloads once it listens: both do, either way.
    await until(lambda: sum(b'"event": "configuration reloaded"' in line for line in lines) == 2)
    assert service.proc.poll() is None
    assert service.workers() == workers  # reloaded in place: nothing restarted
    assert sum(b"reloading the configuration in every worker" in line for line in lines) == 1
    for line in lines:  # the workers share one pipe: each writes whole lines, never interleaved
        if line.startswith(b"{"):
            json.loads(line)
    service.proc.send_signal(signal.SIGTERM)
    assert service.proc.wait(timeout=60) == 0


async def test_a_killed_worker_is_replaced_and_the_port_keeps_serving(service: Service) -> None:
    workers = service.workers()
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    await until(lambda: not alive({victim}))
    # Each SO_REUSEPORT listener has its own accept queue: a connection the kernel handed
    # to the dying worker's socket is reset with it. A client's retry reaches the other.
    for attempt in range(3):
        try:
            assert await service.chat_ok()  # the other worker serves meanwhile
            break
        except aiohttp.ClientOSError:
            assert attempt < 2
    await until(lambda: len(service.workers()) == 2 and victim not in service.workers())
    replaced = service.workers()
    assert replaced - workers and replaced & workers
    for _ in range(8):
        assert await service.chat_ok()
    output = service.output()
    assert f"(pid {victim}) exited with signal SIGKILL; restarting it in 0.5 s" in output
    assert service.proc.returncode == 0


async def test_workers_that_cannot_listen_stop_the_service_with_exit_1(fake: FakeVLLM) -> None:
    with socket.socket() as taken:  # bound without SO_REUSEPORT: no worker can share it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = start(fake.url, port)
        try:
            await until(lambda: proc.poll() is not None, timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        output = proc.communicate()[0].decode()
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}; stopping" in output
    assert "restarting" not in output
