"""Fair turns across ``--workers N``: the supervisor keeps the one ``Admission`` (on a
thread of its own) and the workers ask it over a Unix socket, so the limits and the
round-robin between users hold for the whole service, not per worker.

The protocol is proxy/managed/control.py's: one JSON object per line, and a turn is a
connection. ``take`` (backend, limits, user, weight) is answered when the turn is given
(or with the busy error); the connection stays open while the request runs, and closing
it gives the turn back, so a worker that dies gives back all of its turns, and a worker
whose client hung up while queued leaves the queue at once. ``snapshot`` is one request
and one answer. The limits travel with each ``take`` (every worker has the same
configuration and asks vLLM for the same ``max_num_seqs``); the latest apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import orjson

from proxy.admission import Admission, Ticket
from proxy.errors import ProxyError, ServerBusy
from proxy.identity import Caller
from proxy.owner import SocketOwner, unix_server
from proxy.turns import Limits, Snapshot

_LIMIT = 64 * 1024  # one control line


class Client:
    """The ``Admitter`` interface over the owner's socket: every turn is a round trip."""

    def __init__(self, path: str) -> None:
        self._path = path

    def enter(self, backend: str, limits: Limits, caller: Caller) -> Ticket | None:
        return None  # the owner decides: always ``wait``

    async def wait(self, backend: str, limits: Limits, caller: Caller) -> Ticket:
        try:
            reader, writer = await asyncio.open_unix_connection(self._path, limit=_LIMIT)
        except OSError as exc:
            raise ServerBusy(f"the process that keeps the fair turns is not answering: {exc.strerror or exc}") from None
        try:
            request = {"op": "take", "backend": backend, "limits": dataclasses.asdict(limits), "user": caller.user,
                       "weight": caller.weight}  # fmt: skip
            writer.write(orjson.dumps(request) + b"\n")
            answer = _answer(await reader.readline())
        except BaseException:
            writer.close()  # cancelled (the client left) or refused: the owner drops the wait
            raise
        return Ticket(backend, caller.user, waited=float(answer.get("waited", 0.0)), handle=writer)

    def release(self, ticket: Ticket) -> None:
        if ticket.released:
            return
        ticket.released = True
        writer = ticket.handle
        assert isinstance(writer, asyncio.StreamWriter)
        writer.close()

    def snapshot(self) -> dict[str, Snapshot]:
        return {}  # the owner holds the state: ``figures``

    async def figures(self) -> dict[str, Snapshot]:
        return await snapshot_of(self._path)

    def close(self) -> None:
        return None


async def snapshot_of(path: str) -> dict[str, Snapshot]:
    """The owner's per-backend figures (for metrics in a worker)."""
    reader, writer = await asyncio.open_unix_connection(path, limit=_LIMIT)
    try:
        writer.write(b'{"op":"snapshot"}\n')
        answer = _answer(await reader.readline())
    finally:
        writer.close()
    return {name: Snapshot(**figures) for name, figures in answer["backends"].items()}


def _answer(line: bytes) -> dict[str, Any]:
    if not line:
        raise ServerBusy("the process that keeps the fair turns closed the connection")
    answer: dict[str, Any] = orjson.loads(line)
    if "error" in answer:
        if answer.get("status") == 503:
            raise ServerBusy(answer["error"], int(answer.get("retry_after", 1)))
        raise ProxyError(answer["error"], int(answer.get("status", 500)))
    return answer


async def serve(admission: Admission, path: str) -> asyncio.Server:
    """Answer workers on ``path`` (a Unix socket only this user may open)."""
    ends = (ConnectionError, ValueError, KeyError, TypeError, asyncio.CancelledError)
    return await unix_server(path, lambda reader, writer: _handle(admission, reader, writer), _LIMIT, ends)


async def _handle(admission: Admission, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    request = orjson.loads(await reader.readline() or b"{}")
    if request.get("op") == "snapshot":
        figures = {name: dataclasses.asdict(s) for name, s in admission.snapshot().items()}
        writer.write(orjson.dumps({"backends": figures}) + b"\n")
        return
    if request.get("op") != "take":
        writer.write(orjson.dumps({"error": f"unknown admission operation {request.get('op')!r}", "status": 400}) + b"\n")
        return
    backend, limits = str(request["backend"]), Limits(**request["limits"])
    caller = Caller(user=str(request["user"]), weight=float(request.get("weight", 1.0)))
    ticket = admission.enter(backend, limits, caller)
    if ticket is None:
        ticket = await _wait_unless_gone(admission, reader, backend, limits, caller, writer)
        if ticket is None:
            return
    try:
        writer.write(orjson.dumps({"waited": ticket.waited}) + b"\n")
        await reader.read()  # b"" once the worker closes the connection: the request ended
    finally:
        admission.release(ticket)


async def _wait_unless_gone(
    admission: Admission,
    reader: asyncio.StreamReader,
    backend: str,
    limits: Limits,
    caller: Caller,
    writer: asyncio.StreamWriter,
) -> Ticket | None:
    """Queue for the worker, leaving the queue as soon as it hangs up; None then."""
    waiting = asyncio.ensure_future(admission.wait(backend, limits, caller))
    gone = asyncio.ensure_future(reader.read())
    try:
        await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await gone  # the read has ended before the connection is read again
    if not waiting.done():
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError, ProxyError):
            admission.release(await waiting)  # given just as the worker left
        return None
    try:
        return waiting.result()
    except ProxyError as exc:
        busy = {"error": exc.message, "status": exc.status, "retry_after": getattr(exc, "retry_after", 1)}
        writer.write(orjson.dumps(busy) + b"\n")
        return None


class Owner(SocketOwner):
    """The one ``Admission`` and its socket on a thread of the supervisor process."""

    def __init__(self) -> None:
        super().__init__("admission.sock", "fair-turns", stop_timeout=5.0)

    async def _run_until(self, stop: asyncio.Event, ready: Callable[[], None]) -> None:
        admission = Admission()
        server = await serve(admission, self.path)
        ready()
        try:
            await stop.wait()
        finally:
            server.close()
            admission.close()
