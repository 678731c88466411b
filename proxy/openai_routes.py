"""OpenAI passthrough on the Ollama port (VS Code Copilot and Open WebUI's ``/ollama/v1``
call it): bodies relayed to the backend that serves the model, with the model name
mapped both ways and SSE streamed through event by event."""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from proxy import dispatch, errors, routing
from proxy.backend import AsyncBody, UpstreamStream
from proxy.handlers import loaded, read_json, resolve, unknown
from proxy.redact import scrub_error_event
from proxy.registry import Route
from proxy.sse import DONE, SSEDecoder
from proxy.state import CONTEXT, live
from proxy.streaming import json_response, record_usage
from proxy.translate import models as models_t
from proxy.translate.common import with_system

routes = web.RouteTableDef()


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    return json_response(models_t.to_openai_models(live(request).registry.models()))


@routes.get("/v1/models/{model:.+}")
async def get_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    route = live(request).registry.resolve(name)
    if route is None:
        raise unknown(live(request).registry, "openai", name)
    return json_response(models_t.to_openai_model(route.facts))


async def _passthrough(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, "OpenAIRequest")
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise errors.BadRequest("model is required")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        # vLLM would coerce "true" or 1 and stream while the proxy waits for one JSON body.
        kind = {str: "a string", int: "an integer", float: "a number", list: "an array", dict: "an object"}[type(stream)]
        raise errors.BadRequest(f"Invalid type for 'stream': expected a boolean, but got {kind} instead.")
    request[CONTEXT].log["model"] = name
    route = await resolve(request, name, "openai")
    body["model"] = route.facts.served
    if body.get("tools") == []:
        del body["tools"]  # vLLM rejects an empty list; Ollama's own /v1 route accepts it
    if request.path == "/v1/chat/completions" and isinstance(body.get("messages"), list) and body["messages"]:
        # Ollama's openai/openai.go turns the request into an api.ChatRequest for the same
        # chat handler, so the model's SYSTEM applies unless the first message is a system one.
        body = with_system(body, route.facts.system)
    async with loaded(request, route, None, routing.session_key(request.headers, body)) as route:
        return await _forward(request, route, name, body)


async def _forward(request: web.Request, route: Route, name: str, body: dict[str, Any]) -> web.StreamResponse:
    route, upstream = await dispatch.open_stream(request, route, request.path, body)
    rename = _Rename(route.facts.served, name)
    if body.get("stream") is not True:
        try:
            raw = await AsyncBody(upstream).read()
        finally:
            upstream.close()
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise errors.bad_stream(f"vLLM backend {route.backend.name} sent a body that is not JSON") from None
        if isinstance(data, dict):
            record_usage(request[CONTEXT], data.get("usage"))
        return _renamed_reply(raw, data, rename, name, route.backend.name)
    return await _relay_sse(request, upstream, rename)


def _renamed_reply(raw: bytes, data: Any, rename: _Rename, name: str, backend: str) -> web.Response:
    """vLLM's JSON reply ``raw`` (parsed: ``data``) as it sent it (integers past 64 bits,
    deep nesting and all), with the client's model name (renamed in place: vLLM renders
    replies with Starlette's JSONResponse, compact)."""
    if not isinstance(data, dict) or "model" not in data:
        return web.Response(body=raw, content_type="application/json", charset="utf-8")
    renamed = rename(raw)
    if renamed != raw or data["model"] == name:
        return web.Response(body=renamed, content_type="application/json", charset="utf-8")
    data["model"] = name  # not vLLM's compact JSON: render it again
    try:
        return json_response(data)
    except orjson.JSONEncodeError as exc:
        raise errors.bad_stream(f"vLLM backend {backend} sent JSON the proxy cannot relay: {exc}") from None


for _path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
    routes.post(_path)(_passthrough)


class _Rename:
    """Replaces the served name with the client's in each event's ``"model"`` field,
    without a parse/render per event (vLLM writes compact JSON)."""

    def __init__(self, served: str, requested: str) -> None:
        self._old = b'"model":' + orjson.dumps(served)
        self._new = b'"model":' + orjson.dumps(requested)

    def __call__(self, event: bytes) -> bytes:
        return event.replace(self._old, self._new, 1)


async def _relay_sse(request: web.Request, upstream: UpstreamStream, rename: _Rename) -> web.StreamResponse:
    """vLLM's events as they come, renamed. A stream that breaks (bad framing, a silent
    or vanished backend) raises once the head is out: the middleware ends it with an
    error event and ``[DONE]``."""
    context = request[CONTEXT]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    decoder = SSEDecoder()
    secrets = tuple(s.encode() for s in live(request).config.secrets())
    tail: list[bytes] = []  # the last events: where vLLM puts ``usage``
    try:
        body = AsyncBody(upstream)
        await response.prepare(request)
        context.response = response
        async for data in body.chunks():
            events = decoder.feed(data)
            if events and secrets:  # vLLM's error events may quote a credential (proxy/redact.py)
                events = [scrub_error_event(e, secrets) for e in events]
            if events:
                if not context.first_ns:
                    context.first_ns = time.monotonic_ns()
                    context.log["ttft_ms"] = round((context.first_ns - context.arrival_ns) / 1e6, 1)
                tail = events[-_TAIL:] if len(events) >= _TAIL else [*tail[len(events) - _TAIL :], *events]
                await response.write(b"".join(b"data: " + (e if e == DONE else rename(e)) + b"\n\n" for e in events))
    finally:
        upstream.close()
    record_usage(context, _final_usage(tail))
    await response.write_eof()
    return response


_TAIL = 3  # the usage chunk, [DONE], and one more in case vLLM ends otherwise


def _final_usage(tail: list[bytes]) -> Any:
    """The ``usage`` of the stream's last event that has one: vLLM sends it in a final chunk
    with ``stream_options.include_usage`` (or ``--enable-force-include-usage``), and with
    ``continuous_usage_stats`` in every chunk, the last one the total. Only the tail is
    parsed, once the stream has ended."""
    for event in reversed(tail):
        if event != DONE and b'"usage"' in event:
            try:
                data = orjson.loads(event)
            except orjson.JSONDecodeError:
                return None
            return data.get("usage") if isinstance(data, dict) else None
    return None
