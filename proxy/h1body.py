"""A response body read by a coroutine, for the replies that are not relayed as they
arrive (``stream: false``, ``/v1`` passthrough, control-plane JSON): the sink an
``h1client.UpstreamStream`` hands its body bytes to."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

from proxy.errors import ProxyError


class _Source(Protocol):
    def attach(self, sink: AsyncBody) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class AsyncBody:
    """A sink read by a coroutine: ``async for data in body.chunks()`` yields the body
    as it arrives and raises what ended it early. Past ``limit`` unread bytes the
    upstream is paused until the reader catches up."""

    def __init__(self, upstream: _Source, limit: int = 1024 * 1024) -> None:
        self.upstream = upstream
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self._end: tuple[ProxyError | None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        upstream.attach(self)

    def body(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > self._limit:
            self.upstream.pause_reading()
        self._wake()

    def end(self, error: ProxyError | None) -> None:
        self._end = (error,)
        self._wake()

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                data, self._chunks = b"".join(self._chunks), []
                if self._size > self._limit:
                    self.upstream.resume_reading()
                self._size = 0
                yield data
            elif self._end is not None:
                if self._end[0] is not None:
                    raise self._end[0]
                return
            else:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None

    async def read(self) -> bytes:
        return b"".join([data async for data in self.chunks()])

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
