"""Reading a request body with bounded memory, and parsing it as bounded JSON.

* A ``Content-Length`` over ``MAX_BODY_BYTES`` is refused before a byte is read; a chunked
  body is counted while it is read and refused as soon as it passes the limit.
* A compressed body (``Content-Encoding: gzip``/``deflate``; aiohttp inflates it as a
  stream, a window at a time) may inflate to ``INFLATE_RATIO`` times the bytes that came
  over the wire, at least ``INFLATE_FLOOR`` bytes, never more than ``MAX_BODY_BYTES``:
  a gzip bomb stops after a few MiB instead of filling the limit.
* Data that does not decode as its ``Content-Encoding`` says is the client's fault: 400.
* JSON nested deeper than ``MAX_JSON_DEPTH`` is refused at parse time; orjson itself
  parses up to 1024 levels but serialises at most 254, so a deeper value forwarded to
  vLLM would fail on the way out.
"""

from __future__ import annotations

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


async def read_body(request: web.Request) -> bytearray:
    """The body, decoded, refused with 413 as soon as it is known to be too large."""
    declared = request.content_length
    if declared is not None and declared > MAX_BODY_BYTES:
        raise too_large(f"Content-Length {declared} is over the {MAX_BODY_BYTES // MIB} MiB limit")
    encoding = request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower()
    compressed = encoding not in ("", "identity")
    stream = request.content
    body = bytearray()
    try:
        while chunk := await stream.readany():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise too_large(f"the body is over the {MAX_BODY_BYTES // MIB} MiB limit")
            if compressed and len(body) > INFLATE_FLOOR:
                wire = stream.total_raw_bytes
                if len(body) > INFLATE_RATIO * wire:
                    raise too_large(
                        f"the {encoding} body inflates to more than {INFLATE_RATIO} times its {wire} bytes on the wire"
                    )
    except RequestPayloadError as exc:
        cause = exc.__cause__
        if compressed and cause is not None and "content-encoding" in str(cause).lower():
            raise errors.BadRequest(f"invalid request body: not valid {encoding} data (Content-Encoding: {encoding})") from None
        raise errors.BadRequest(f"invalid request body: {cause or exc}".strip()) from None
    return body


def too_large(detail: str) -> errors.PayloadTooLarge:
    return errors.PayloadTooLarge(f"request body too large: {detail}")


def parse_json(raw: bytes | bytearray) -> Any:
    """orjson's parse with a nesting limit; syntax errors are 400s."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
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
