"""A fault-injection backend: a tiny asyncio TCP server that answers each request with
exactly the bytes a test scripts, for the faults a well-behaved server never produces:
malformed SSE events, bad chunk sizes, truncated bodies, stalls.

``script[path]`` is a list of steps, played in order on the connection of a request to
that path: ``bytes`` are written as they are, a ``float`` pauses that many seconds, and
``HANG`` waits until the client closes. After the last step the server closes the
connection. A path with no script gets ``404`` (so configured aliases need no
discovery). Every request is recorded as ``(method, path, body)``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson

HANG = object()
Step = bytes | float | object


def head(status: str = "200 OK", *headers: str) -> bytes:
    return f"HTTP/1.1 {status}\r\n".encode() + b"".join(h.encode() + b"\r\n" for h in headers) + b"\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def sse(*events: Any) -> bytes:
    """SSE ``data:`` events; ``bytes`` go in raw (``b"[DONE]"``, broken JSON)."""
    return b"".join(b"data: " + (e if isinstance(e, bytes) else orjson.dumps(e)) + b"\n\n" for e in events)


SSE_HEAD = head("200 OK", "Content-Type: text/event-stream; charset=utf-8", "Transfer-Encoding: chunked")
END = b"0\r\n\r\n"

# A well-formed vLLM chat stream's events, to script around (vLLM's ChatCompletionStreamResponse).
ENV = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "tiny"}
ROLE = {**ENV, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
HELLO = {**ENV, "choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]}
STOP = {**ENV, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
USAGE = {**ENV, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}


def json_reply(body: Any, status: str = "200 OK") -> list[Step]:
    data = orjson.dumps(body)
    return [head(status, "Content-Type: application/json", f"Content-Length: {len(data)}") + data]


class LoopbackServer:
    """An asyncio TCP server on 127.0.0.1 that runs ``serve`` for each connection, closes
    the connection after it, and cancels every connection still open on ``stop``."""

    def __init__(self) -> None:
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self.url

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._server:
            self._server.close()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.serve(reader, writer)
        except asyncio.CancelledError:
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            self._tasks.discard(task)


class RawBackend(LoopbackServer):
    def __init__(self) -> None:
        super().__init__()
        self.script: dict[str, list[Step]] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self.closed_by_client = 0  # connections the client closed before the script ended

    def bodies(self, path: str) -> list[Any]:
        return [body for _, p, body in self.requests if p == path]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_head = await reader.readuntil(b"\r\n\r\n")
            method, path = request_head.split(b" ", 2)[:2]
            length = 0
            for line in request_head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            raw = await reader.readexactly(length) if length else b""
            self.requests.append((method.decode(), path.decode(), orjson.loads(raw) if raw else None))
            steps = self.script.get(path.decode(), [head("404 Not Found", "Content-Length: 0")])
            for step in steps:
                if isinstance(step, bytes):
                    writer.write(step)
                    await writer.drain()
                elif isinstance(step, float):
                    await asyncio.sleep(step)
                else:  # HANG
                    await reader.read()
                    self.closed_by_client += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            self.closed_by_client += 1
