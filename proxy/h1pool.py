"""Idle keep-alive connections to vLLM servers, reused by ``h1client`` for the next request
to the same server.

vLLM's HTTP server (uvicorn) closes a connection that stayed idle for 5 s
(``VLLM_HTTP_TIMEOUT_KEEP_ALIVE`` in vllm/envs.py). The pool hands out only connections
idle for less than ``IDLE_SECONDS`` (4 s), so a request is not sent on one the server is
about to close; a server may still close one earlier (a restart), which ``h1client``
detects before any response byte and retries once on a fresh connection. A connection
that the server closes, or that receives bytes while idle, leaves the pool at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

IDLE_SECONDS = 4.0
PER_SERVER = 1024  # idle connections kept per server; more are closed

Key = tuple[str, str, int, str]  # scheme, host, port, CA file


class _Idle(asyncio.Protocol):
    """The protocol of a connection while it waits in the pool."""

    def __init__(self, pool: Pool, key: Key, transport: asyncio.Transport, since: float) -> None:
        self.pool, self.key, self.transport, self.since = pool, key, transport, since

    def data_received(self, data: bytes) -> None:
        self.transport.close()  # nothing is due on an idle connection: it cannot be trusted

    def eof_received(self) -> bool:
        return False  # the server closed its side: close ours

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.forget(self)


class Pool:
    """``take`` an idle connection for a server, ``put`` one back once its response is
    complete. ``clock`` (monotonic seconds) is injected by tests."""

    def __init__(self, idle_s: float = IDLE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_s = idle_s
        self._clock = clock
        self._idle: dict[Key, list[_Idle]] = {}
        self._closed = False  # closed: connections that come back are closed, not kept

    def take(self, key: Key) -> asyncio.Transport | None:
        """The most recently used idle connection to the server, if it is fresh enough."""
        entries = self._idle.get(key)
        now = self._clock()
        while entries:
            idle = entries.pop()
            if now - idle.since < self.idle_s and not idle.transport.is_closing():
                return idle.transport
            idle.transport.close()
        return None

    def put(self, key: Key, transport: asyncio.Transport) -> None:
        if transport.is_closing():
            return
        if self._closed:
            transport.close()
            return
        entries = self._idle.setdefault(key, [])
        now = self._clock()
        while entries and now - entries[0].since >= self.idle_s:
            entries.pop(0).transport.close()  # the oldest first: the server would close them soon
        if len(entries) >= PER_SERVER:
            transport.close()
            return
        idle = _Idle(self, key, transport, now)
        transport.set_protocol(idle)
        entries.append(idle)

    def forget(self, idle: _Idle) -> None:
        entries = self._idle.get(idle.key, [])
        if idle in entries:
            entries.remove(idle)

    @property
    def closed(self) -> bool:
        return self._closed

    def idle_count(self, key: Key | None = None) -> int:
        return sum(len(v) for k, v in self._idle.items() if key is None or k == key)

    def close(self) -> None:
        self._closed = True
        for entries in self._idle.values():
            for idle in entries:
                idle.transport.close()
        self._idle.clear()
