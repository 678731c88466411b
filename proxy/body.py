"""Reading a request body with bounded memory, and parsing it as bounded JSON.

* A ``Content-Length`` over ``MAX_BODY_BYTES`` is refused before a byte is read; a chunked
  body is counted while it is read and refused as soon as it passes the limit.
* A compressed body (``Content-Encoding: gzip``/``deflate``) is inflated here, as it
  arrives, never more than the room left under the limit at a time (aiohttp's own
  decompression is off, see proxy/app.py: it answers a plain-text 400 for encodings it
  cannot decode and for some truncated deflate before the application sees the request).
  It may inflate to ``INFLATE_RATIO`` times the bytes that came over the wire, at least
  ``INFLATE_FLOOR`` bytes, never more than ``MAX_BODY_BYTES``: a gzip bomb stops after a
  few MiB instead of filling the limit.
* Data that does not decode as its ``Content-Encoding`` says, or an encoding other than
  gzip, deflate and identity, is the client's fault: 400 naming Content-Encoding.
* JSON nested deeper than ``MAX_JSON_DEPTH`` is refused at parse time; orjson itself
  parses up to 1024 levels but serialises at most 254, so a deeper value forwarded to
  vLLM would fail on the way out.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestPayloadError

from proxy import errors

MIB = 1024 * 1024
# Ollama takes large bodies (base64 images, long contexts); aiohttp's default is 1 MiB.
MAX_BODY_BYTES = 256 * MIB
INFLATE_RATIO = 100  # JSON text rarely compresses past 20:1; a gzip bomb reaches ~1000:1
INFLATE_FLOOR = 16 * MIB
MAX_JSON_DEPTH = 128
_PIECE = 256 * 1024  # inflated bytes per zlib call
ENCODINGS = ("gzip", "x-gzip", "deflate")  # besides identity; RFC 9110 §8.4.1.3: x-gzip is gzip


async def read_body(request: web.Request) -> bytearray:
    """The body, decoded, refused with 413 as soon as it is known to be too large."""
    declared = request.content_length
    if declared is not None and declared > MAX_BODY_BYTES:
        raise too_large(f"Content-Length {declared} is over the {MAX_BODY_BYTES // MIB} MiB limit")
    encoding = _encoding(request.headers.get(hdrs.CONTENT_ENCODING, ""))
    inflater = Inflater(encoding) if encoding else None
    stream = request.content
    body = bytearray()
    wire = 0
    try:
        while chunk := await stream.readany():
            wire += len(chunk)
            if inflater is None:
                body += chunk
            else:
                inflater.feed(chunk, body, _room(body, wire))
            _check_size(body, wire, encoding)
    except RequestPayloadError as exc:
        cause = exc.__cause__
        raise errors.BadRequest(f"invalid request body: {cause or exc}".strip()) from None
    if inflater is not None:
        inflater.finish()
    return body


async def expect_continue(request: web.Request) -> None:
    """``Expect: 100-continue`` (curl sends it for large bodies): a body whose
    ``Content-Length`` is already over the limit is not invited, so the client never sends
    it and gets the handler's 413 instead; any other body gets aiohttp's usual answer."""
    declared = request.content_length
    if declared is not None and declared > MAX_BODY_BYTES:
        return
    if request.version >= (1, 1):
        if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"Unknown Expect: {request.headers.get(hdrs.EXPECT, '')}")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the 100 is not part of the response (as aiohttp does)


def _encoding(header: str) -> str:
    """The one content coding to undo ("" for none), or a 400 naming the header."""
    codings = [c.strip().lower() for c in header.split(",") if c.strip().lower() not in ("", "identity")]
    if not codings:
        return ""
    if len(codings) > 1 or codings[0] not in ENCODINGS:
        raise errors.BadRequest(
            f"unsupported Content-Encoding: {header.strip()} (the proxy decodes gzip, deflate or identity, one at a time)"
        )
    return "gzip" if codings[0] == "x-gzip" else codings[0]


def _room(body: bytearray, wire: int) -> int:
    """How many more inflated bytes may come out before the body is certainly too large."""
    return max(1, min(MAX_BODY_BYTES, max(INFLATE_FLOOR, INFLATE_RATIO * wire)) - len(body) + 1)


def _check_size(body: bytearray, wire: int, encoding: str) -> None:
    if len(body) > MAX_BODY_BYTES:
        raise too_large(f"the body is over the {MAX_BODY_BYTES // MIB} MiB limit")
    if encoding and len(body) > INFLATE_FLOOR and len(body) > INFLATE_RATIO * wire:
        raise too_large(f"the {encoding} body inflates to more than {INFLATE_RATIO} times its {wire} bytes on the wire")


class Inflater:
    """gzip (several members allowed, as ``cat a.gz b.gz`` makes) or deflate (zlib-wrapped,
    as RFC 9110 says, or raw, as some clients send it), a bounded piece at a time."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._zlib: Any = None

    def feed(self, data: bytes, out: bytearray, room: int) -> None:
        """Append at most ``room`` inflated bytes of ``data`` to ``out``, a piece at a time
        (no second copy of a large inflated chunk); input left over once they are out is
        dropped, since that many bytes already make the body too large."""
        if self._zlib is None:
            raw_deflate = self.encoding == "deflate" and data[0] & 0x0F != 8  # no zlib header (RFC 1950: CM = 8)
            self._zlib = self._new(raw_deflate)
        end = len(out) + room
        try:
            while len(out) < end:
                if self._zlib.eof:
                    if not data:
                        break
                    if self.encoding != "gzip":
                        raise self._bad("data after the end of the deflate stream")
                    self._zlib = self._new(False)  # the next gzip member
                want = min(end - len(out), _PIECE)
                piece = self._zlib.decompress(data, want)
                out += piece
                data = self._zlib.unconsumed_tail or self._zlib.unused_data
                if not data and len(piece) < want:
                    break  # all the input taken and all its output out (a full piece may leave some in zlib)
        except zlib.error:
            raise self._bad("not valid") from None

    def finish(self) -> None:
        """At the end of the body: a stream cut short is a 400."""
        if self._zlib is not None and not self._zlib.eof:
            raise self._bad("truncated")

    def _new(self, raw_deflate: bool) -> Any:
        if raw_deflate:
            return zlib.decompressobj(-zlib.MAX_WBITS)
        return zlib.decompressobj(zlib.MAX_WBITS | (16 if self.encoding == "gzip" else 0))

    def _bad(self, what: str) -> errors.BadRequest:
        detail = f"{what} {self.encoding} data" if what in ("not valid", "truncated") else what
        return errors.BadRequest(f"invalid request body: {detail} (Content-Encoding: {self.encoding})")


def too_large(detail: str) -> errors.PayloadTooLarge:
    return errors.PayloadTooLarge(f"request body too large: {detail}")


def parse_json(raw: bytes | bytearray) -> Any:
    """orjson's parse with a nesting limit; syntax errors are 400s."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("failed to allocate memory"):  # orjson's text for a body cut off ~200 levels deep
            raise errors.BadRequest(
                f"invalid JSON: unexpected end of data, nested more than {MAX_JSON_DEPTH} levels deep"
            ) from None
        raise errors.BadRequest(f"invalid JSON: {exc}") from None
    # A value with fewer brackets than the limit cannot be nested deeper: skip the walk.
    if isinstance(value, dict | list) and raw.count(b"{") + raw.count(b"[") > MAX_JSON_DEPTH and _too_deep(value):
        raise errors.BadRequest(f"invalid JSON: nested more than {MAX_JSON_DEPTH} levels deep")
    return value


def _too_deep(value: dict[str, Any] | list[Any]) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return True
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False
