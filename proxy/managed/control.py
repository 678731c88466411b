"""With ``--workers N`` one process owns the managed models (the supervisor, on a thread
of its own) and the workers ask it over a Unix socket, so there is one start per model
and one view of what is loaded.

The protocol is one JSON object per line. A lease is a connection: ``acquire`` answers
with the model's URL and the connection stays open while the request runs; ``release``
(or the connection closing, e.g. when a worker dies) gives the lease back. ``unload``
and ``loaded`` are one request and one answer each.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import orjson
import structlog

from proxy.errors import ModelLoadFailed, ProxyError, ServerBusy
from proxy.managed.host import Lease, Loaded
from proxy.managed.scheduler import Scheduler
from proxy.owner import SocketOwner, unix_server

log = structlog.get_logger("proxy.managed")
_LIMIT = 1024 * 1024  # one control line


class ControlClient:
    """The ``Host`` interface over the owner's socket."""

    def __init__(self, path: str) -> None:
        self._path = path

    async def acquire(self, name: str, keep_alive: float | None = None) -> Lease:
        reader, writer = await self._connect()
        try:
            answer = await self._ask(reader, writer, {"op": "acquire", "name": name, "keep_alive": keep_alive})
        except BaseException:
            writer.close()
            raise
        return Lease(name, answer["url"], answer["generation"], answer["started"], handle=writer)

    def release(self, lease: Lease, keep_alive: float | None = None) -> None:
        writer = lease.handle
        assert isinstance(writer, asyncio.StreamWriter)
        with contextlib.suppress(ConnectionError, RuntimeError):
            writer.write(orjson.dumps({"op": "release", "keep_alive": keep_alive}) + b"\n")
        writer.close()

    async def unload(self, name: str) -> None:
        await self._once({"op": "unload", "name": name})

    async def loaded(self) -> list[Loaded]:
        answer = await self._once({"op": "loaded"})
        return [Loaded(**m) for m in answer["models"]]

    async def preload(self) -> None:
        return None  # the owner preloads

    async def close(self) -> None:
        return None  # the owner stops the processes

    async def _once(self, request: dict[str, Any]) -> dict[str, Any]:
        reader, writer = await self._connect()
        try:
            return await self._ask(reader, writer, request)
        finally:
            writer.close()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_unix_connection(self._path, limit=_LIMIT)
        except OSError as exc:
            raise ProxyError(f"the process that runs the managed models is not answering: {exc.strerror or exc}") from None

    @staticmethod
    async def _ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: dict[str, Any]) -> dict[str, Any]:
        writer.write(orjson.dumps(request) + b"\n")
        line = await reader.readline()
        if not line:
            raise ProxyError("the process that runs the managed models closed the connection")
        answer: dict[str, Any] = orjson.loads(line)
        if "error" in answer:
            status = int(answer.get("status", 500))
            if status == 503:
                raise ServerBusy(answer["error"], int(answer.get("retry_after", 1)))
            if status == 500:
                raise ModelLoadFailed(answer["error"])
            raise ProxyError(answer["error"], status)
        return answer


async def serve(scheduler: Scheduler, path: str) -> asyncio.Server:
    """Answer workers on ``path`` (a Unix socket only this user may open)."""
    ends = (ConnectionError, ValueError)
    return await unix_server(path, lambda reader, writer: _handle(scheduler, reader, writer), _LIMIT, ends)


async def _handle(scheduler: Scheduler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    line = await reader.readline()
    if not line:
        return
    request = orjson.loads(line)
    op = request.get("op")
    try:
        if op == "acquire":
            lease = await scheduler.acquire(request["name"], request.get("keep_alive"))
            keep_alive = None
            try:
                writer.write(orjson.dumps({"url": lease.url, "generation": lease.generation, "started": lease.started}) + b"\n")
                released = await reader.readline()  # b"" when the worker hung up
                if released:
                    keep_alive = orjson.loads(released).get("keep_alive")
            finally:
                scheduler.release(lease, keep_alive)
            return
        if op == "unload":
            await scheduler.unload(request["name"])
            answer: dict[str, Any] = {"ok": True}
        elif op == "loaded":
            answer = {"models": [m.__dict__ for m in await scheduler.loaded()]}
        else:
            answer = {"error": f"unknown control operation {op!r}", "status": 400}
    except ProxyError as exc:
        answer = {"error": exc.message, "status": exc.status, "retry_after": getattr(exc, "retry_after", 1)}
    writer.write(orjson.dumps(answer) + b"\n")
    await writer.drain()


class Owner(SocketOwner):
    """The scheduler and its control socket on a thread of the supervisor process, so
    the vLLM children outlive no worker restart and have exactly one parent."""

    def __init__(self, make: Any) -> None:
        super().__init__("managed.sock", "managed-models", stop_timeout=30.0)
        self._make = make  # () -> Scheduler, called on the owner's event loop

    async def _run_until(self, stop: asyncio.Event, ready: Callable[[], None]) -> None:
        scheduler: Scheduler = self._make()
        server = await serve(scheduler, self.path)
        ready()
        preload = asyncio.create_task(scheduler.preload())
        try:
            await stop.wait()
        finally:
            preload.cancel()
            server.close()
            await scheduler.close()
            log.info("managed models stopped")
