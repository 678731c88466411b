"""The aiohttp internals the fast path relies on (proxy/aiohttp_raw.py), checked over a
real socket against the installed aiohttp. A failure here means aiohttp changed under
the pinned range: each assertion names the assumption that broke."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.aiohttp_raw import TERMINATOR, AiohttpChanged, raw_channel

CHANGED = "aiohttp {} changed what proxy/aiohttp_raw.py assumes: {}"
SEEN: list[bool] = []  # raw_channel's `chunked`, per request


async def handler(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    writer = await response.prepare(request)
    assert writer is not None
    transport, chunked = raw_channel(writer)
    SEEN.append(chunked)
    transport.write(b"5\r\nraw1\n\r\n" if chunked else b"raw1\n")
    await response.write_eof(b"last\n")
    return response


async def exchange(aiohttp_server: Any, version: bytes) -> tuple[bytes, bytes, bool]:
    app = web.Application()
    app.router.add_get("/", handler)
    server = await aiohttp_server(app)
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"GET / HTTP/%b\r\nHost: x\r\nConnection: close\r\n\r\n" % version)
    async with asyncio.timeout(5):
        raw = await reader.read(-1)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body, SEEN.pop()


async def test_chunked_body_raw_chunks_then_write_eof_sends_one_last_chunk_and_the_terminator(aiohttp_server: Any) -> None:
    head, body, chunked = await exchange(aiohttp_server, b"1.1")
    version = aiohttp.__version__
    assert head.startswith(b"HTTP/1.1 200"), CHANGED.format(version, f"the head did not come first: {head[:80]!r}")
    assert chunked is True, CHANGED.format(version, "StreamWriter.chunked is not true for an HTTP/1.1 stream")
    assert b"transfer-encoding: chunked" in head.lower(), CHANGED.format(version, "the stream is not chunked")
    expected = b"5\r\nraw1\n\r\n" + b"5\r\nlast\n\r\n" + TERMINATOR
    assert body == expected, CHANGED.format(version, f"write_eof after raw chunks wrote {body!r}, not {expected!r}")


async def test_http10_body_is_unframed(aiohttp_server: Any) -> None:
    _, body, chunked = await exchange(aiohttp_server, b"1.0")
    assert chunked is False, CHANGED.format(aiohttp.__version__, "StreamWriter.chunked is not false for HTTP/1.0")
    assert body == b"raw1\nlast\n", CHANGED.format(aiohttp.__version__, f"an HTTP/1.0 body came out as {body!r}")


def test_a_writer_that_is_not_aiohttps_stream_writer_fails_with_a_clear_message() -> None:
    class Other(aiohttp.abc.AbstractStreamWriter):
        async def write(self, chunk: Any) -> None: ...
        async def write_eof(self, chunk: bytes = b"") -> None: ...
        async def drain(self) -> None: ...
        def enable_compression(self, encoding: str = "deflate", strategy: Any = None) -> None: ...
        def enable_chunking(self) -> None: ...
        async def write_headers(self, status_line: str, headers: Any) -> None: ...
        def send_headers(self) -> None: ...

    with pytest.raises(AiohttpChanged, match="not aiohttp.http.StreamWriter"):
        raw_channel(Other())
