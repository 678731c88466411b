"""Moves bytes: vLLM's SSE stream in, Ollama NDJSON (or one JSON object) out.

Per upstream read: decode the complete SSE events, translate them, and issue ONE write
with every resulting line (performance.md B3: chunked reads and coalesced writes are the
largest single cost factor). Nothing is logged per token.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from proxy.errors import BackendUnavailable, ProxyError
from proxy.sse import DONE, SSEDecoder
from proxy.translate.common import rfc3339
from proxy.translate.stream import StreamTranslator, fold

NDJSON = "application/x-ndjson"
_LINE = orjson.OPT_APPEND_NEWLINE


class Clock:
    """``created_at`` strings cached per millisecond: formatting costs as much as a
    whole orjson parse and render (performance.md B2)."""

    __slots__ = ("_ms", "_text")

    def __init__(self) -> None:
        self._ms = -1
        self._text = ""

    def created_at(self) -> str:
        now = time.time_ns()
        ms = now // 1_000_000
        if ms != self._ms:
            self._ms, self._text = ms, rfc3339(now)
        return self._text


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json",
                        charset="utf-8", headers=headers)  # fmt: skip


async def relay_ollama(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    translator: StreamTranslator,
    clock: Clock,
    stream: bool,
    fold_key: str,
) -> web.StreamResponse:
    """Relay one vLLM stream as Ollama NDJSON (``stream``) or as one folded object.

    Errors before the first client byte propagate (the middleware gives them a real
    status); after it, one final ``{"error": ...}`` line ends the stream with status 200
    (ollama-api.md §1.3). The upstream response is always closed, so a client that
    hangs up aborts the generation in vLLM.
    """
    decoder = SSEDecoder()
    response: web.StreamResponse | None = None
    collected: list[dict[str, Any]] = []
    log = request.get("log", {})
    try:
        try:
            async for data in upstream.content.iter_any():
                now, created = time.monotonic_ns(), clock.created_at()
                out = [o for e in decoder.feed(data) if e != DONE for o in translator.feed(e, created, now)]
                if not out:
                    continue
                if not stream:
                    collected += out
                    continue
                if response is None:
                    response = await _prepare(request)
                await response.write(b"".join(orjson.dumps(o, option=_LINE) for o in out))
            now, created = time.monotonic_ns(), clock.created_at()
            tail = [o for e in decoder.close() if e != DONE for o in translator.feed(e, created, now)]
            final = translator.finish(created, now)
        except aiohttp.ClientPayloadError as exc:
            raise BackendUnavailable(f"the vLLM stream broke off: {exc}") from None
        except aiohttp.ClientConnectionError as exc:
            if isinstance(exc, ConnectionResetError | aiohttp.ClientConnectionResetError) and response is not None:
                raise  # the client hung up while we wrote to it
            raise BackendUnavailable(f"the vLLM stream broke off: {exc or type(exc).__name__}") from None
    except ProxyError as exc:
        _record(log, translator)
        if response is None:
            raise
        await response.write(orjson.dumps({"error": exc.message}, option=_LINE))
        await response.write_eof()
        return response
    finally:
        upstream.close()
    _record(log, translator)
    if not stream:
        return json_response(fold(collected + tail, final, fold_key))
    if response is None:
        response = await _prepare(request)
    await response.write(b"".join(orjson.dumps(o, option=_LINE) for o in [*tail, final]))
    await response.write_eof()
    return response


def single_object(body: dict[str, Any], stream: bool) -> web.Response:
    """Load/unload answers: Ollama sends one object, NDJSON-typed when streaming."""
    if not stream:
        return json_response(body)
    return web.Response(body=orjson.dumps(body, option=_LINE), content_type=NDJSON)


async def _prepare(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers={"Content-Type": NDJSON})
    await response.prepare(request)
    return response


def _record(log: dict[str, Any], translator: StreamTranslator) -> None:
    if translator.first_ns is not None:
        log["ttft_ms"] = round((translator.first_ns - translator.arrival_ns) / 1e6, 1)
    if translator.usage:
        log["prompt_tokens"] = translator.usage.get("prompt_tokens")
        log["completion_tokens"] = translator.usage.get("completion_tokens")
