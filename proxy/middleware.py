"""Per-request bookkeeping: request id, the error → wire mapping, one canonical log line."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from proxy import errors, metrics
from proxy.drain import SHUTTING_DOWN
from proxy.redact import scrub_value
from proxy.state import CONTEXT, DRAIN, RequestContext, live
from proxy.streaming import json_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = structlog.get_logger("proxy.access")


@web.middleware
async def canonical(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
    started = time.monotonic_ns()
    request[CONTEXT] = context = RequestContext(request_id, started)
    record = context.log
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    drain = request.app[DRAIN]
    task = drain.enter()
    status = 500
    try:
        response = await handler(request)
        status = 499 if record.pop("client_gone", False) else response.status
        return response
    except web.HTTPException as exc:
        response = _http_exception(exc)
        status = response.status
        return response
    except asyncio.CancelledError:
        if not drain.was_cut(task):
            status = 499  # the client went away; nginx's and Ollama's code for it
            raise
        assert task is not None
        task.uncancel()  # the drain's own cancel: answer instead of vanishing
        response, status = await _failed(request, context, errors.ServerBusy(SHUTTING_DOWN))
        return response
    except ConnectionResetError:
        status = 499
        raise
    except Exception as exc:  # noqa: BLE001 - every error leaves as JSON, never a traceback page
        if not isinstance(exc, errors.ProxyError):
            log.exception("unhandled error", path=request.path)
        response, status = await _failed(request, context, exc)
        return response
    finally:
        drain.leave(task)
        elapsed_ns = time.monotonic_ns() - started
        log.info("request", method=request.method, path=request.path, status=status,
                 total_ms=round(elapsed_ns / 1e6, 1), **record)  # fmt: skip
        metrics.observe(_outcome(request, context, status, elapsed_ns))


def _outcome(request: web.Request, context: RequestContext, status: int, elapsed_ns: int) -> metrics.Outcome:
    """The request's figures with bounded labels: the matched route's pattern, and the
    registry's model name (a name it does not know is "other")."""
    resource = request.match_info.route.resource
    model = context.model or (metrics.OTHER if "model" in context.log else "")
    first = (context.first_ns - context.arrival_ns) / 1e9 if context.first_ns else None
    return metrics.Outcome(resource.canonical if resource is not None else metrics.OTHER, model, context.backend, status,
                           elapsed_ns / 1e9, first, context.prompt_tokens, context.output_tokens)  # fmt: skip


async def _failed(request: web.Request, context: RequestContext, exc: Exception) -> tuple[web.StreamResponse, int]:
    """The error as the client gets it, and the status to log."""
    to_wire = errors.to_openai_error if request.path.startswith("/v1/") else errors.to_ollama_error
    status, body = to_wire(exc)
    # vLLM's own texts are relayed in errors; one may echo a credential (the request's
    # Authorization header, say): no backend's password or api_key leaves the proxy.
    # (Only the configured secrets: the proxy's own texts may show "Bearer <key>".)
    body = scrub_value(body, live(request).config.secrets(), bearer=False)
    context.log["error"] = body["error"] if isinstance(body["error"], str) else body["error"]["message"]
    if context.response is not None:  # the head is out: the error can only end the body
        status = context.response.status
        try:
            await context.response.write_eof(_error_tail(context.response, body))
        except ConnectionError:
            status = 499
        return context.response, status
    headers = errors.wire_headers(exc)
    response = json_response(body, status, headers)
    if not request.content.is_eof() or request.app[DRAIN].started:
        response.force_close()  # a body left unread (too large, undecodable), or stopping: say so, then close
    return response, status


def _error_tail(response: web.StreamResponse, body: dict[str, Any]) -> bytes:
    """The last bytes of a stream that broke after its first byte: one ``{"error"}``
    NDJSON line (Ollama), or an SSE error event and ``[DONE]`` (the OpenAI routes)."""
    if response.content_type == "text/event-stream":
        return b"data: " + orjson.dumps(body) + b"\n\ndata: [DONE]\n\n"
    return orjson.dumps(body, option=orjson.OPT_APPEND_NEWLINE)


def _http_exception(exc: web.HTTPException) -> web.Response:
    """Routing errors as Ollama's gin router words them (Ollama's server/routes.go, gin)."""
    if exc.status == 404:
        return web.Response(status=404, text="404 page not found")
    if exc.status == 405:
        return web.Response(status=405, text="405 method not allowed")
    if exc.status == 413:
        return json_response({"error": "request body too large"}, 413)
    return web.Response(status=exc.status, text=exc.text or exc.reason)


_GENERATING = ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/v1/chat/completions",
               "/v1/completions", "/v1/embeddings")  # fmt: skip


def inflight_cap() -> Middleware:
    """Past ``max_inflight`` generation requests in flight in this worker (read at request
    time: a reload may change it), answer 503 with Ollama's queue-full error and
    Retry-After instead of queueing silently (a saturated relay otherwise shows up only as
    seconds of added TTFT)."""
    inflight = 0

    @web.middleware
    async def cap(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal inflight
        if request.path not in _GENERATING:
            return await handler(request)
        if inflight >= live(request).config.max_inflight:
            raise errors.ServerBusy
        inflight += 1
        try:
            return await handler(request)
        finally:
            inflight -= 1

    return cap
