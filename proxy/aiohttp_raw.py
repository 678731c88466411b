"""Every aiohttp internal the streaming fast path relies on, in one place.

``fastrelay`` writes body chunks straight to the client's transport, bypassing aiohttp's
``StreamWriter``, and leaves the chunked terminator to ``StreamResponse.write_eof``. That
depends on four things aiohttp does not document as API:

1. ``StreamWriter.transport`` is the connection's transport (``None`` once it closed);
2. ``StreamWriter.chunked`` tells whether aiohttp frames the body as chunks
   (false for an HTTP/1.0 client);
3. ``StreamResponse.prepare`` sends the head at once (``StreamWriter._headers_buf`` is
   empty afterwards), so raw chunks cannot overtake it;
4. ``write_eof(data)`` after raw chunks sends ``data`` as one last chunk and then
   ``0\\r\\n\\r\\n`` (``TERMINATOR``), exactly once.

Tested with aiohttp 3.14.x (3.14.5), the range pyproject.toml pins (``>=3.14,<3.15``);
tests/integration/test_aiohttp_raw.py checks all four over a real socket and fails with
a message naming the assumption that broke, so an upgrade outside the pin is checked
before it is allowed.
"""

from __future__ import annotations

import asyncio

from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import StreamWriter

TERMINATOR = b"0\r\n\r\n"  # what write_eof sends after a chunked body (assumption 4)


class AiohttpChanged(RuntimeError):
    """aiohttp no longer behaves as ``fastrelay`` assumes: see this module's docstring."""


def raw_channel(writer: AbstractStreamWriter) -> tuple[asyncio.WriteTransport, bool]:
    """The client's transport for a prepared response, and whether body bytes written to
    it must be framed as chunks. Raises ``ConnectionResetError`` if the client is gone."""
    if not isinstance(writer, StreamWriter):
        raise AiohttpChanged(f"StreamResponse.prepare returned {type(writer).__name__}, not aiohttp.http.StreamWriter")
    chunked = getattr(writer, "chunked", None)
    if not isinstance(chunked, bool):
        raise AiohttpChanged("aiohttp.http.StreamWriter has no boolean `chunked` attribute any more")
    if getattr(writer, "_headers_buf", None):
        raise AiohttpChanged("StreamResponse.prepare left the response head buffered (StreamWriter._headers_buf)")
    transport = writer.transport
    if transport is None:
        raise ConnectionResetError("the client closed the connection")
    return transport, chunked
