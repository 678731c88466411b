"""Responses that are not token streams: JSON bodies, the folded non-streaming reply and
load/unload objects, plus the per-request outcome both relays log. Token streams go
through ``fastrelay``. Nothing is logged per token.
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


async def collect_ollama(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    translator: StreamTranslator,
    clock: Clock,
    fold_key: str,
) -> web.Response:
    """A non-streaming Ollama reply (``stream: false``): vLLM's stream read to the end
    and folded into one object, so timings are measured as for a stream. Streams go
    through ``fastrelay``. Errors propagate (the middleware gives them a real status);
    the upstream response is always closed, so a client that hangs up (its handler is
    cancelled) aborts the generation in vLLM.
    """
    decoder = SSEDecoder()
    collected: list[dict[str, Any]] = []
    log = request[CONTEXT].log
    try:
        async for data in upstream.content.iter_any():
            now, created = time.monotonic_ns(), clock.created_at()
            for event in decoder.feed(data):
                if event != DONE:
                    collected += translator.feed(event, created, now)
        now, created = time.monotonic_ns(), clock.created_at()
        for event in decoder.close():
            if event != DONE:
                collected += translator.feed(event, created, now)
        final = translator.finish(created, now)
    except aiohttp.ClientError as exc:
        log["error"] = f"the vLLM stream broke off: {exc or type(exc).__name__}"
        raise BackendUnavailable(log["error"]) from None
    except ProxyError as exc:
        log["error"] = exc.message
        raise
    finally:
        upstream.close()
        record_outcome(log, translator)
    return json_response(fold(collected, final, fold_key))


def single_object(body: dict[str, Any], stream: bool) -> web.Response:
    """Load/unload answers: Ollama sends one object, NDJSON-typed when streaming."""
    if not stream:
        return json_response(body)
    return web.Response(body=orjson.dumps(body, option=_LINE), content_type=NDJSON)


def record_outcome(log: dict[str, Any], translator: StreamTranslator) -> None:
    if translator.first_ns is not None:
        log["ttft_ms"] = round((translator.first_ns - translator.arrival_ns) / 1e6, 1)
    if translator.usage:
        log["prompt_tokens"] = translator.usage.get("prompt_tokens")
        log["completion_tokens"] = translator.usage.get("completion_tokens")
