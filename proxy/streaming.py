"""Responses that are not token streams: JSON bodies, the folded non-streaming reply and
load/unload objects, plus the per-request outcome both relays log. Token streams go
through ``fastrelay``. Nothing is logged per token.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from proxy.backend import AsyncBody, UpstreamStream
from proxy.clock import Clock
from proxy.encoder import Encoder
from proxy.errors import ProxyError
from proxy.state import CONTEXT, RequestContext
from proxy.translate.stream import StreamTranslator

NDJSON = "application/x-ndjson"
_LINE = orjson.OPT_APPEND_NEWLINE


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json",
                        charset="utf-8", headers=headers)  # fmt: skip


async def collect_ollama(
    request: web.Request,
    upstream: UpstreamStream,
    translator: StreamTranslator,
    clock: Clock,
    fold_key: str,
    before_final: Callable[[], Awaitable[None]] | None = None,
) -> web.Response:
    """A non-streaming Ollama reply (``stream: false``): vLLM's stream read to the end
    through the same ``Encoder`` as a stream, folded into one object, so timings are
    measured as for a stream. Errors propagate (the middleware gives them a real status:
    broken framing or a wrong-shaped event 502, a silent backend 504); the upstream is
    always closed, so a client that hangs up (its handler is cancelled) aborts the
    generation in vLLM.
    """
    encoder = Encoder(translator, clock.created_at, fold_key)
    context = request[CONTEXT]
    try:
        async for data in AsyncBody(upstream).chunks():
            encoder.feed(data, time.monotonic_ns())
        encoder.close(time.monotonic_ns())
        if before_final is not None:
            await before_final()
        body = encoder.finish(time.monotonic_ns())
    except ProxyError as exc:
        context.log["error"] = exc.message
        raise
    finally:
        upstream.close()
        record_outcome(context, translator)
    return web.Response(body=body, content_type="application/json", charset="utf-8")


def single_object(body: dict[str, Any], stream: bool) -> web.Response:
    """Load/unload answers: Ollama sends one object, NDJSON-typed when streaming."""
    if not stream:
        return json_response(body)
    return web.Response(body=orjson.dumps(body, option=_LINE), content_type=NDJSON)


def record_outcome(context: RequestContext, translator: StreamTranslator) -> None:
    """A generation's first-token time and vLLM's token counts, onto the request's context
    (for the metrics) and its log line."""
    log = context.log
    if translator.first_ns is not None:
        context.first_ns = translator.first_ns
        log["ttft_ms"] = round((translator.first_ns - translator.arrival_ns) / 1e6, 1)
    if translator.usage:
        context.prompt_tokens = _count(translator.usage.get("prompt_tokens"))
        context.output_tokens = _count(translator.usage.get("completion_tokens"))
        log["prompt_tokens"] = translator.usage.get("prompt_tokens")
        log["completion_tokens"] = translator.usage.get("completion_tokens")


def record_usage(context: RequestContext, usage: Any) -> None:
    """Token counts from an OpenAI ``usage`` object (an embedding, a /v1 JSON reply)."""
    if isinstance(usage, dict):
        context.prompt_tokens = _count(usage.get("prompt_tokens"))
        context.output_tokens = _count(usage.get("completion_tokens"))


def _count(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None
