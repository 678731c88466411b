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

from proxy.clock import Clock
from proxy.errors import BackendUnavailable, ProxyError
from proxy.sse import DONE, SSEDecoder
from proxy.state import CONTEXT
from proxy.translate.stream import StreamTranslator, fold

NDJSON = "application/x-ndjson"
_LINE = orjson.OPT_APPEND_NEWLINE


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
    out: list[dict[str, Any]] = []  # translated from the current read, not yet written
    log = request[CONTEXT].log
    try:
        try:
            async for data in upstream.content.iter_any():
                now, created = time.monotonic_ns(), clock.created_at()
                out = []
                for event in decoder.feed(data):
                    if event != DONE:
                        out += translator.feed(event, created, now)
                if not out:
                    continue
                if stream:
                    response = response or await _prepare(request)
                    await response.write(_lines(out))
                else:
                    collected += out
                out = []
            now, created = time.monotonic_ns(), clock.created_at()
            for event in decoder.close():
                if event != DONE:
                    out += translator.feed(event, created, now)
            out.append(translator.finish(created, now))
        except aiohttp.ClientPayloadError as exc:
            raise BackendUnavailable(f"the vLLM stream broke off: {exc}") from None
        except aiohttp.ClientConnectionError as exc:
            if isinstance(exc, ConnectionResetError) and response is not None:
                # The client hung up while we wrote to it: nothing left to tell it. The
                # upstream is closed below, which aborts the request in vLLM.
                log["client_gone"] = True
                return response
            raise BackendUnavailable(f"the vLLM stream broke off: {exc or type(exc).__name__}") from None
    except ProxyError as exc:
        record_outcome(log, translator)
        log["error"] = exc.message
        if not stream or (response is None and not out):
            raise  # nothing sent yet: a real status and {"error"} (ollama-api.md §1.3)
        if response is None:
            response = await _prepare(request)
        # What arrived before the error is still delivered, then one error line.
        await response.write(_lines(out) + orjson.dumps({"error": exc.message}, option=_LINE))
        await response.write_eof()
        return response
    finally:
        upstream.close()
    record_outcome(log, translator)
    if not stream:
        final = out.pop()
        return json_response(fold(collected + out, final, fold_key))
    if response is None:
        response = await _prepare(request)
    await response.write(_lines(out))
    await response.write_eof()
    return response


def _lines(objects: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(o, option=_LINE) for o in objects)


def single_object(body: dict[str, Any], stream: bool) -> web.Response:
    """Load/unload answers: Ollama sends one object, NDJSON-typed when streaming."""
    if not stream:
        return json_response(body)
    return web.Response(body=orjson.dumps(body, option=_LINE), content_type=NDJSON)


async def _prepare(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers={"Content-Type": NDJSON})
    await response.prepare(request)
    return response


def record_outcome(log: dict[str, Any], translator: StreamTranslator) -> None:
    if translator.first_ns is not None:
        log["ttft_ms"] = round((translator.first_ns - translator.arrival_ns) / 1e6, 1)
    if translator.usage:
        log["prompt_tokens"] = translator.usage.get("prompt_tokens")
        log["completion_tokens"] = translator.usage.get("completion_tokens")
