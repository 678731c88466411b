"""Every aiohttp internal the streaming fast path relies on, in one place.

``fastrelay`` writes body chunks straight to the client's transport, bypassing aiohttp's
``StreamWriter``, and leaves the chunked terminator to ``StreamResponse.write_eof``. That
depends on four things aiohttp does not document as API:

1. ``StreamWriter.transport`` is the connection's transport (``None`` once it closed);
2. ``StreamWriter.chunked`` tells whether aiohttp frames the body as chunks
   (false for an HTTP/1.0 client);
3. ``StreamResponse.prepare`` of a response whose class sets
   ``_send_headers_immediately = False`` (``HeldHeadResponse``; aiohttp's own ``Response``
   does so) leaves the serialised head in ``StreamWriter._headers_buf`` until the first
   body write (``_headers_written`` false), so ``raw_channel`` can take it out and send it
   in the same write as the first chunk: one syscall and one client wakeup fewer per
   stream. With a plain ``StreamResponse`` the head is sent at once and nothing is held;
4. ``write_eof(data)`` after raw chunks sends ``data`` as one last chunk and then
   ``0\\r\\n\\r\\n`` (``TERMINATOR``), exactly once; before any, it sends the held head
   with ``data``.

Tested with aiohttp 3.14.x (3.14.5), the range pyproject.toml pins (``>=3.14,<3.15``);
tests/integration/test_aiohttp_raw.py checks all four over a real socket and fails with
a message naming the assumption that broke, so an upgrade outside the pin is checked
before it is allowed.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import StreamWriter

TERMINATOR = b"0\r\n\r\n"  # what write_eof sends after a chunked body (assumption 4)


class AiohttpChanged(RuntimeError):
    """aiohttp no longer behaves as ``fastrelay`` assumes: see this module's docstring."""


class HeldHeadResponse(web.StreamResponse):
    """A streamed response whose head waits for the first body bytes (assumption 3)."""

    _send_headers_immediately = False


def raw_channel(writer: AbstractStreamWriter) -> tuple[asyncio.WriteTransport, bool, bytes]:
    """The client's transport for a prepared response, whether body bytes written to it
    must be framed as chunks, and the response head if it is still held (else ``b""``),
    which the caller must write ahead of the first body bytes. Raises
    ``ConnectionResetError`` if the client is gone."""
    if not isinstance(writer, StreamWriter):
        raise AiohttpChanged(f"StreamResponse.prepare returned {type(writer).__name__}, not aiohttp.http.StreamWriter")
    chunked = getattr(writer, "chunked", None)
    if not isinstance(chunked, bool):
        raise AiohttpChanged("aiohttp.http.StreamWriter has no boolean `chunked` attribute any more")
    held = getattr(writer, "_headers_buf", False)
    if (held is not None and not isinstance(held, bytes)) or not isinstance(getattr(writer, "_headers_written", None), bool):
        raise AiohttpChanged("aiohttp.http.StreamWriter no longer holds the head in `_headers_buf`/`_headers_written`")
    transport = writer.transport
    if transport is None:
        raise ConnectionResetError("the client closed the connection")
    head = b""
    if held and not writer._headers_written:
        head, writer._headers_buf, writer._headers_written = held, None, True
    return transport, chunked, head
