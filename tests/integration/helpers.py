"""Assertions, small servers and real ``serve`` processes shared by the integration tests
(no proxy code here)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from tests.fakes.vllm import FakeVLLM, _count_prompt

NDJSON = "application/x-ndjson"
JSON = "application/json; charset=utf-8"
DURATIONS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")


def ndjson(raw: bytes) -> list[dict[str, Any]]:
    """Parse an NDJSON body, asserting Ollama's framing: every line one compact JSON
    object ending in a newline, no blank lines."""
    assert raw, "empty body"
    assert raw.endswith(b"\n"), f"body does not end with a newline: {raw[-80:]!r}"
    objects = []
    for line in raw[:-1].split(b"\n"):
        assert line.strip(), f"blank line in NDJSON body: {raw!r}"
        assert not line.startswith(b"data:"), f"SSE framing in NDJSON body: {line!r}"
        obj = orjson.loads(line)
        assert isinstance(obj, dict), line
        assert orjson.dumps(obj) == line, f"not compact JSON: {line!r}"
        objects.append(obj)
    return objects


def usage_of(fake: FakeVLLM, path: str = "/v1/chat/completions") -> tuple[int, int]:
    """(prompt_tokens, completion_tokens) the fake reported for its last request on path."""
    body = fake.last(path)
    limit = body.get("max_tokens")
    tokens = fake.reply.tokens if limit is None else fake.reply.tokens[:limit]
    return _count_prompt(body), len(tokens) + len(fake.reply.reasoning)


def assert_final(obj: dict[str, Any], usage: tuple[int, int], done_reason: str = "stop") -> None:
    """The last generate/chat object: done, done_reason, integer ns durations, counts."""
    assert obj["done"] is True
    assert obj["done_reason"] == done_reason
    for key in DURATIONS:
        assert type(obj[key]) is int and obj[key] > 0, (key, obj.get(key))
    assert obj["total_duration"] >= obj["eval_duration"]
    assert obj["prompt_eval_count"] == usage[0]
    assert obj["eval_count"] == usage[1]
    assert isinstance(obj["created_at"], str) and obj["created_at"].endswith("Z")


def l2(vector: list[float]) -> float:
    return math.sqrt(math.fsum(v * v for v in vector))


def normalised(vector: list[float]) -> list[float]:
    norm = l2(vector)
    return [v / norm for v in vector]


def free_port() -> int:
    """A local port nothing listens on: free to bind, and a connection to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


closed_port = free_port


# -- the real CLI as a process -----------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


def serve(*args: str, env: dict[str, str] | None = None, stdout: Any = subprocess.PIPE) -> subprocess.Popen[bytes]:
    """``python -m proxy serve ARGS`` from the repository, with its output (stdout and
    stderr together) to ``stdout``; ``OLLAMA_HOST`` is unset and no
    ``PROMETHEUS_MULTIPROC_DIR`` is inherited, as in a fresh shell."""
    environ = {**os.environ, "OLLAMA_HOST": "", **(env or {})}
    environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    cmd = [sys.executable, "-m", "proxy", "serve", *args]
    return subprocess.Popen(cmd, cwd=REPO, stdout=stdout, stderr=subprocess.STDOUT, env=environ)


def stop(proc: subprocess.Popen[bytes], timeout: float = 60) -> str:
    """SIGTERM (unless it has exited already), wait for the exit; what it printed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=timeout)[0]
    return out.decode() if out else ""


async def wait_until_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    """Until ``GET url`` answers 200; fails at once (with its output) if ``proc`` exits."""
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("proxy did not start")


async def until(condition: Callable[[], object], what: str = "the condition", timeout: float = 10.0) -> float:
    """Poll ``condition`` every 10 ms until it is true; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def children(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False).stdout
    return {int(p) for p in out.split()}


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (workers, and anything they or the parent started)."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    parents: dict[int, list[int]] = {}
    for line in out.splitlines():
        child, parent = map(int, line.split())
        parents.setdefault(parent, []).append(child)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pids: set[int]) -> set[int]:
    return {p for p in pids if Path(f"/proc/{p}").exists() and "zombie" not in _state(p)}


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (OSError, IndexError):
        return "zombie"


def listening(pids: set[int], port: int) -> set[int]:
    """Which of ``pids`` hold a socket listening on ``port`` (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    out = set()
    for pid in pids:
        try:
            links = {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}
        except OSError:
            continue  # gone, or an fd closed while listing
        if links & inodes:
            out.add(pid)
    return out


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class SilentServer:
    """Accepts TCP connections, reads what it is sent, never answers."""

    def __init__(self) -> None:
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.url = ""

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server:
            self._server.close()
            await self._server.wait_closed()


class BreakingVLLM(FakeVLLM):
    """The fake vLLM plus one failure mode: ``break_after`` events into a stream, the
    server drops the TCP connection (no chunked terminator, no [DONE]); with
    ``break_cleanly`` the HTTP response ends properly instead, but without a finish chunk
    or [DONE]."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.break_after: int | None = None
        self.break_cleanly = False
        self.keepalive_timeout = 75.0

    async def start(self, port: int = 0, ssl_context: Any = None) -> str:
        # FakeVLLM.start with the runner's keep-alive idle timeout configurable, as
        # uvicorn's (vLLM's) 5 s VLLM_HTTP_TIMEOUT_KEEP_ALIVE.
        original = web.AppRunner

        def runner(app: web.Application, **kw: Any) -> web.AppRunner:
            return original(app, keepalive_timeout=self.keepalive_timeout, **kw)

        web.AppRunner = runner  # type: ignore[assignment,misc]
        try:
            return await super().start(port, ssl_context)
        finally:
            web.AppRunner = original  # type: ignore[misc]

    async def _generate(self, request: web.Request, body: dict[str, Any], chat: bool) -> web.StreamResponse:
        if self.break_after is None or not body.get("stream"):
            return await super()._generate(request, body, chat)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        tokens = self.reply.tokens
        for event in self._events(body, chat, tokens, "stop")[: self.break_after]:
            await response.write(b"data: " + orjson.dumps(event) + b"\n\n")
        if self.break_cleanly:
            await response.write_eof()
            return response
        await asyncio.sleep(0.05)  # let the events reach the proxy first
        assert request.transport is not None
        request.transport.close()
        return response


class HeaderRecordingVLLM(FakeVLLM):
    """The fake vLLM that also records the headers of every inference request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.headers: list[CIMultiDict[str]] = []

    async def _parse(self, request: web.Request, kind: str) -> Any:
        self.headers.append(request.headers.copy())
        return await super()._parse(request, kind)


class DroppingForwarder:
    """A TCP relay in front of a backend that drops a kept-alive connection when a second
    request arrives on it, as a server does that closed the idle connection just as the
    client reused it. By default it keeps reading what the client sends (so the kernel
    closes with a FIN) and closes a moment later; with ``reset`` it aborts at once (RST)."""

    def __init__(self, target_port: int, reset: bool = False) -> None:
        self.target_port = target_port
        self.reset = reset
        self.dropped = 0
        self.forwarded = 0
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self.url

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        pump = asyncio.create_task(self._pump(up_reader, writer))
        self._tasks.add(pump)
        requests = 0
        try:
            while data := await reader.read(65536):
                if data.startswith((b"GET ", b"POST ")):
                    requests += 1
                    if requests > 1:
                        self.dropped += 1
                        if self.reset:
                            writer.transport.abort()
                            break
                        # drain a moment, then close as an idle-timeout would
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(0.01):
                                while await reader.read(65536):
                                    pass
                        break
                    self.forwarded += 1
                up_writer.write(data)
                await up_writer.drain()
        except ConnectionError:
            pass
        finally:
            pump.cancel()
            up_writer.close()
            writer.close()

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()

    async def stop(self) -> None:
        if self._server:
            self._server.close()
        for task in self._tasks:
            task.cancel()
