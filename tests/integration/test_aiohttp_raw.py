"""The aiohttp internals the fast path relies on (proxy/aiohttp_raw.py), checked over a
real socket against the installed aiohttp. A failure here means aiohttp changed under
the pinned range: each assertion names the assumption that broke."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.aiohttp_raw import TERMINATOR, AiohttpChanged, HeldHeadResponse, raw_channel

CHANGED = "aiohttp {} changed what proxy/aiohttp_raw.py assumes: {}"
SEEN: list[tuple[bool, bytes]] = []  # raw_channel's `chunked` and held head, per request


async def handler(request: web.Request) -> web.StreamResponse:
    kind = HeldHeadResponse if request.path == "/held" else web.StreamResponse
    response = kind(headers={"Content-Type": "application/x-ndjson"})
    writer = await response.prepare(request)
    assert writer is not None
    transport, chunked, head = raw_channel(writer)
    SEEN.append((chunked, head))
    transport.write(head + (b"5\r\nraw1\n\r\n" if chunked else b"raw1\n"))
    await response.write_eof(b"last\n")
    return response


async def exchange(aiohttp_server: Any, version: bytes, path: str = "/held") -> tuple[bytes, bytes, bool, bytes]:
    app = web.Application()
    app.router.add_get("/held", handler)
    app.router.add_get("/plain", handler)
    server = await aiohttp_server(app)
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"GET %b HTTP/%b\r\nHost: x\r\nConnection: close\r\n\r\n" % (path.encode(), version))
    async with asyncio.timeout(5):
        raw = await reader.read(-1)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    chunked, held = SEEN.pop()
    return head, body, chunked, held


async def test_chunked_body_raw_chunks_then_write_eof_sends_one_last_chunk_and_the_terminator(aiohttp_server: Any) -> None:
    head, body, chunked, held = await exchange(aiohttp_server, b"1.1")
    version = aiohttp.__version__
    assert held.startswith(b"HTTP/1.1 200") and held.endswith(b"\r\n\r\n"), CHANGED.format(
        version, f"prepare of a HeldHeadResponse did not leave the head in StreamWriter._headers_buf: {held[:80]!r}"
    )
    assert head.startswith(b"HTTP/1.1 200"), CHANGED.format(version, f"the head did not come first: {head[:80]!r}")
    assert chunked is True, CHANGED.format(version, "StreamWriter.chunked is not true for an HTTP/1.1 stream")
    assert b"transfer-encoding: chunked" in head.lower(), CHANGED.format(version, "the stream is not chunked")
    expected = b"5\r\nraw1\n\r\n" + b"5\r\nlast\n\r\n" + TERMINATOR
    assert body == expected, CHANGED.format(version, f"write_eof after raw chunks wrote {body!r}, not {expected!r}")


async def test_a_plain_stream_response_sends_its_head_at_prepare_and_nothing_is_held(aiohttp_server: Any) -> None:
    head, body, chunked, held = await exchange(aiohttp_server, b"1.1", "/plain")
    assert held == b"", CHANGED.format(aiohttp.__version__, "StreamResponse.prepare no longer sends the head at once")
    assert head.startswith(b"HTTP/1.1 200") and chunked is True
    assert body == b"5\r\nraw1\n\r\n" + b"5\r\nlast\n\r\n" + TERMINATOR


async def test_http10_body_is_unframed(aiohttp_server: Any) -> None:
    _, body, chunked, _held = await exchange(aiohttp_server, b"1.0")
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


def test_a_stream_writer_without_the_held_head_fields_fails_with_a_clear_message() -> None:
    from aiohttp.http import StreamWriter

    writer = StreamWriter.__new__(StreamWriter)  # no __init__: none of its instance fields
    writer.chunked = True
    with pytest.raises(AiohttpChanged, match="_headers_buf"):
        raw_channel(writer)
