"""The Ollama REST surface: one short handler per endpoint (parse → resolve → translate →
call → respond)."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from aiohttp import web

from proxy import dispatch, errors, fastrelay, names, routing
from proxy.handlers import field, loaded, model_name, read_json, resolve, stream_flag
from proxy.managed.service import managed_ps
from proxy.registry import Route
from proxy.state import CLOCK, CONTEXT, MANAGED, TOOLS_DROPPED, live
from proxy.streaming import collect_ollama, json_response, record_usage, single_object
from proxy.translate import embed as embed_t
from proxy.translate import fields
from proxy.translate import models as models_t
from proxy.translate.chat import ChatStreamTranslator, to_openai_chat_request
from proxy.translate.common import MAX_KEEP_ALIVE_S, keep_alive_seconds, with_system
from proxy.translate.generate import (
    GenerateStreamTranslator,
    to_openai_context_tokenize_request,
    to_openai_generate_request,
    to_openai_tokenize_request,
)
from proxy.translate.stream import StreamTranslator

routes = web.RouteTableDef()
log = structlog.get_logger("proxy.routes")


@routes.get("/")
async def root(_: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


@routes.get("/api/version")
async def version(request: web.Request) -> web.Response:
    return json_response({"version": live(request).config.ollama_version})


@routes.get("/api/tags")
async def tags(request: web.Request) -> web.Response:
    return json_response(models_t.to_ollama_tags(live(request).registry.models()))


@routes.get("/api/ps")
async def ps(request: web.Request) -> web.Response:
    # Without sleep mode vLLM keeps its model loaded until the server stops: reported as
    # loaded forever, as Ollama does for keep_alive < 0 (Go's longest duration, ≈ 292 years
    # ahead), which is also as far as any keep_alive reaches.
    keepalive = live(request).keepalive
    now = datetime.now(UTC)
    forever = now + timedelta(seconds=MAX_KEEP_ALIVE_S)
    loaded_models = []
    for route in live(request).registry.running_routes():
        awake = [b for b in route.replicas if not keepalive.is_asleep(b)]
        if not awake:
            continue
        remaining = [keepalive.expires_at(b) for b in awake]
        left = None if None in remaining else min(MAX_KEEP_ALIVE_S, max(r for r in remaining if r is not None))
        expires = forever if left is None else now + timedelta(seconds=left)
        loaded_models.append((route.facts, expires.isoformat(), route.facts.size, tuple(b.name for b in awake)))
    if MANAGED in request.app:
        loaded_models += await managed_ps(request.app[MANAGED], live(request).registry, forever)
    return json_response(models_t.to_ollama_ps(loaded_models))


@routes.post("/api/show")
async def show(request: web.Request) -> web.Response:
    body = await read_json(request, "ShowRequest")
    fields.check(body, fields.SHOW, "ShowRequest")
    name = _required(body, "ShowRequest")
    route = await resolve(request, name, "show")
    return json_response(models_t.to_ollama_show(route.facts, name))


@routes.post("/api/chat")
async def chat(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, "ChatRequest")
    fields.check_chat(body)
    name = _required(body, "ChatRequest")
    stream = stream_flag(body, "ChatRequest")
    messages = field(body, "messages", list, "ChatRequest", "[]api.Message")
    keep_alive_seconds(body.get("keep_alive"))
    route = await resolve(request, name, "chat")
    if not messages:
        return await _lifecycle(request, route, name, body, stream, {"message": {"role": "assistant", "content": ""}})
    _require_capability(route, name, "completion", "chat")
    body = _check_features(request, route, name, body, any(isinstance(m, dict) and m.get("images") for m in messages))
    translated = to_openai_chat_request(with_system(body, route.facts.system), route.facts.served, route.facts.options,
                                        route.facts.max_model_len)  # fmt: skip
    translator = ChatStreamTranslator(name, request[CONTEXT].arrival_ns)
    async with loaded(request, route, body.get("keep_alive"), routing.session_key(request.headers, body)) as route:
        path = "/v1/chat/completions"
        return await _generate(request, route, path, translated.body, translated.dropped, translator, stream, "message")


@routes.post("/api/generate")
async def generate(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, "GenerateRequest")
    fields.check_generate(body)
    name = model_name(body, "GenerateRequest")
    if not name:
        raise errors.not_found("generate", name)  # Ollama maps invalid names to 404 here
    stream = stream_flag(body, "GenerateRequest")
    prompt = field(body, "prompt", str, "GenerateRequest", "string")
    keep_alive_seconds(body.get("keep_alive"))
    route = await resolve(request, name, "generate")
    body = with_system(body, route.facts.system)
    if not prompt and not body.get("suffix"):
        return await _lifecycle(request, route, name, body, stream, {"response": ""})
    _require_capability(route, name, "completion", "generate")
    _check_features(request, route, name, body, bool(body.get("images")))
    if body.get("suffix") and "insert" not in route.facts.capabilities:
        raise errors.BadRequest(f"{_full_name(name)} does not support insert")
    async with loaded(request, route, body.get("keep_alive")) as route:
        context_ids = None
        if body.get("context") and not body.get("raw"):
            tokenize = to_openai_tokenize_request(body, route.facts.served)
            route, tokenized = await dispatch.post_json(request, route, "/tokenize", tokenize)
            context_ids = list(tokenized.get("tokens") or [])
        facts = route.facts
        path, translated = to_openai_generate_request(
            body, facts.served, facts.options, facts.max_model_len, context_ids, facts.fim
        )
        with_context = not body.get("raw") and not body.get("suffix")
        translator = GenerateStreamTranslator(name, request[CONTEXT].arrival_ns, context=with_context)
        sent_ids = translated.body["prompt"] if path == "/v1/completions" and with_context else None

        async def tokenize_context(served: Route) -> None:
            if translator.missing_context:  # on the replica that generated, after any failover
                output = "".join(translator.output_text)
                translator.set_context(await _tokenized_context(request, served, body, output, sent_ids))

        return await _generate(request, route, path, translated.body, translated.dropped, translator, stream, "",
                               tokenize_context)  # fmt: skip


@routes.post("/api/embed")
async def embed(request: web.Request) -> web.Response:
    body = await read_json(request, "EmbedRequest")
    fields.check(body, fields.EMBED, "EmbedRequest")
    name = _required(body, "EmbedRequest")
    truncate = field(body, "truncate", bool, "EmbedRequest", "bool")
    dimensions = field(body, "dimensions", int, "EmbedRequest", "int")
    keep_alive_seconds(body.get("keep_alive"))
    inputs = embed_t.embed_inputs(body)
    route = await resolve(request, name, "embed")
    _require_capability(route, name, "embedding", "embeddings")
    result: dict[str, Any] = {"model": name, "embeddings": []}
    if inputs:
        upstream_body = embed_t.to_openai_embed_request(inputs, route.facts.served, truncate is not False)
        async with loaded(request, route, body.get("keep_alive")) as route:
            response = await _call_embeddings(request, route, upstream_body, truncate is False)
        raw = embed_t.vectors(response, len(inputs))
        result["embeddings"] = embed_t.to_ollama_embeddings(raw, dimensions)
        count = embed_t.prompt_tokens(response)
        if count:
            result["prompt_eval_count"] = count
            request[CONTEXT].log["prompt_tokens"] = count
    now = time.monotonic_ns()
    result["total_duration"] = max(1, now - request[CONTEXT].arrival_ns)
    result["load_duration"] = max(1, (request[CONTEXT].sent_ns or now) - request[CONTEXT].arrival_ns)
    return json_response(result)


@routes.post("/api/embeddings")
async def embeddings(request: web.Request) -> web.Response:
    body = await read_json(request, "EmbeddingRequest")
    fields.check(body, fields.EMBEDDINGS, "EmbeddingRequest")
    name = _required(body, "EmbeddingRequest")
    prompt = field(body, "prompt", str, "EmbeddingRequest", "string")
    keep_alive_seconds(body.get("keep_alive"))
    route = await resolve(request, name, "embeddings")
    _require_capability(route, name, "embedding", "embeddings")
    if not prompt:
        return json_response({"embedding": []})
    upstream_body = embed_t.to_openai_embed_request([prompt], route.facts.served, truncate=True)
    async with loaded(request, route, body.get("keep_alive")) as route:
        response = await _call_embeddings(request, route, upstream_body, strict=False)
    # The legacy endpoint returns the model's raw vector, not re-normalised: Ollama's
    # server/routes.go EmbeddingsHandler skips the normalize() that EmbedHandler applies.
    return json_response({"embedding": embed_t.vectors(response, 1)[0]})


_UNSUPPORTED = {
    "push": "pushing models is not supported: the models are served by vLLM",
    "create": "creating models is not supported: start vLLM with the model, or add an alias with default "
    "options under `models:` in the proxy's config.yaml",
    "copy": "copying models is not supported: add an alias under `models:` in the proxy's config.yaml",
    "blobs": "blobs are not supported: models are loaded by vLLM, not uploaded to the proxy",
}


def _unsupported(kind: str) -> Any:
    async def handler(_: web.Request) -> web.Response:
        raise errors.NotSupported(_UNSUPPORTED[kind])

    return handler


routes.post("/api/push")(_unsupported("push"))
routes.post("/api/create")(_unsupported("create"))
routes.post("/api/copy")(_unsupported("copy"))
routes.route("*", "/api/blobs/{digest}")(_unsupported("blobs"))


async def _generate(
    request: web.Request,
    route: Route,
    path: str,
    body: dict[str, Any],
    dropped: list[str],
    translator: StreamTranslator,
    stream: bool,
    fold_key: str,
    before_final: Callable[[Route], Awaitable[None]] | None = None,
) -> web.StreamResponse:
    """Open the stream (with failover) and relay it; ``before_final`` gets the route that
    answered, once its body is complete."""
    if dropped:
        request[CONTEXT].log["dropped"] = dropped  # on the request's one log line, not a line of its own
    translator.sent_ns = time.monotonic_ns()
    try:
        route, upstream = await dispatch.open_stream(request, route, path, body)
    except errors.BackendError as exc:
        raise _gone(exc, "generate", translator.model) from None
    final = None if before_final is None else functools.partial(before_final, route)
    if stream:  # the callback hot path: no Task wakeup per event (proxy/fastrelay.py)
        return await fastrelay.relay(request, upstream, translator, request.app[CLOCK], final)
    return await collect_ollama(request, upstream, translator, request.app[CLOCK], fold_key, final)


async def _tokenized_context(
    request: web.Request, route: Route, body: dict[str, Any], output: str, sent_ids: list[int] | None
) -> list[int]:
    """``context`` from vLLM's ``/tokenize`` when the reply carried no token ids; an
    empty list (logged) if that fails too, since clients expect the field."""
    tokenize = to_openai_context_tokenize_request(body, route.facts.served, output, sent_ids)
    try:
        tokenized = await route.backend.post_json("/tokenize", tokenize, request[CONTEXT].request_id)
    except errors.ProxyError as exc:
        request[CONTEXT].log["context_error"] = exc.message
        return []
    tokens = tokenized.get("tokens") if isinstance(tokenized, dict) else None
    if not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
        request[CONTEXT].log["context_error"] = "vLLM's /tokenize answered without token ids"
        return []
    return [*(sent_ids or ()), *tokens]


async def _call_embeddings(request: web.Request, route: Route, body: dict[str, Any], strict: bool) -> Any:
    request[CONTEXT].sent_ns = time.monotonic_ns()
    try:
        response = (await dispatch.post_json(request, route, "/v1/embeddings", body))[1]
    except errors.BackendError as exc:
        if strict and exc.status == 400 and "maximum context length" in exc.message:
            raise errors.BadRequest("the input length exceeds the context length") from None
        raise _gone(exc, "embed", request[CONTEXT].log.get("model", "")) from None
    record_usage(request[CONTEXT], response.get("usage") if isinstance(response, dict) else None)
    return response


def _gone(exc: errors.BackendError, endpoint: str, name: str) -> errors.ProxyError:
    """A model the backend stopped serving since the last discovery: Ollama's own
    not-found text, which clients match on, rather than vLLM's."""
    if exc.status == 404 and "does not exist" in exc.message:
        return errors.not_found(endpoint, name)
    return exc


async def _lifecycle(
    request: web.Request, route: Route, name: str, body: dict[str, Any], stream: bool, empty: dict[str, Any]
) -> web.Response:
    """Empty prompt/messages: Ollama's load (or, with keep_alive 0, unload) answer, one
    object even when streaming. A managed model is really started or stopped; a
    sleep-mode backend is woken or put to sleep; any other vLLM keeps its model loaded,
    so nothing is sent upstream."""
    keep_alive = keep_alive_seconds(body.get("keep_alive"))
    reason = "unload" if keep_alive == 0 else "load"
    keepalive = live(request).keepalive
    if route.managed and reason == "unload":
        await request.app[MANAGED].unload(route.facts.name)
    elif route.managed or keepalive.manages(route.backend):
        if reason == "unload":
            await keepalive.unload(route.backend)
        else:
            async with loaded(request, route, body.get("keep_alive"), turn=False):
                pass
    created = request.app[CLOCK].created_at()
    return single_object({"model": name, "created_at": created, **empty, "done": True, "done_reason": reason}, stream)


def _required(body: dict[str, Any], go_type: str) -> str:
    name = model_name(body, go_type)
    if not name:
        raise errors.BadRequest("model is required")
    return name


def _require_capability(route: Route, name: str, capability: str, action: str) -> None:
    if capability not in route.facts.capabilities:
        raise errors.BadRequest(f'"{name}" does not support {action}')


def _check_features(request: web.Request, route: Route, name: str, body: dict[str, Any], images: bool) -> dict[str, Any]:
    """Ollama's capability errors (server/routes.go), for what the model cannot do; the
    body to send, without its tools where drop_unsupported_tools says so."""
    caps = route.facts.capabilities
    if body.get("tools") and "tools" not in caps:
        if not route.facts.drop_tools:
            raise errors.no_tools(_full_name(name), route.backend.name, route.managed, route.facts.configured)
        body = {k: v for k, v in body.items() if k != "tools"}
        request[CONTEXT].log["tools_dropped"] = True
        warned = request.app[TOOLS_DROPPED]
        if route.facts.name not in warned:
            warned.add(route.facts.name)
            log.warning("answering chats without their tools: the model has no tool parser (drop_unsupported_tools)",
                        model=route.facts.name, backend=route.backend.name)  # fmt: skip
    if images and "vision" not in caps:
        raise errors.BadRequest(f"{_full_name(name)} does not support vision")
    if body.get("think") and route.facts.configured and "thinking" not in caps:
        # Only configured capabilities are known: vLLM does not reveal a reasoning parser.
        raise errors.BadRequest(f'"{name}" does not support thinking')
    return body


def _full_name(name: str) -> str:
    parsed = names.parse(name)
    return f"{parsed.host}/{parsed.namespace}/{parsed.model}:{parsed.tag}" if parsed else name
