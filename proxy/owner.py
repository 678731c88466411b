"""A service the supervisor keeps once for every worker (``--workers N``): on a thread of
its own with its own event loop, answering on a Unix socket in a private temporary
directory. proxy/admission_remote.py (fair turns) and proxy/managed/control.py (managed
models) are the two."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import threading
from collections.abc import Awaitable, Callable


class SocketOwner:
    """Subclasses say what runs in ``_run_until``: bind ``self.path``, call ``ready``, run
    until ``stop`` is set, then clean up."""

    def __init__(self, socket_name: str, thread_name: str, stop_timeout: float) -> None:
        self.path = os.path.join(tempfile.mkdtemp(prefix="ollama-vllm-proxy-"), socket_name)
        self._stop_timeout = stop_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name=thread_name, daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(30)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(self._stop_timeout)
        with contextlib.suppress(OSError):
            os.unlink(self.path)
            os.rmdir(os.path.dirname(self.path))

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        await self._run_until(self._stop, self._ready.set)

    async def _run_until(self, stop: asyncio.Event, ready: Callable[[], None]) -> None:
        raise NotImplementedError


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def unix_server(path: str, handle: Handler, limit: int, ends: tuple[type[BaseException], ...]) -> asyncio.Server:
    """Answer workers on ``path`` (a Unix socket only this user may open). A connection whose
    ``handle`` raises one of ``ends`` (a bad line, a worker gone, the owner stopping) just
    ends; every connection is closed when its handler returns."""

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handle(reader, writer)
        except ends:
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(one, path, limit=limit)
    os.chmod(path, 0o600)
    return server
