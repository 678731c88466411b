"""Sending a request to the backend chosen for it, with one failover: a request whose
backend fails before answering (a connection that cannot be opened in time or breaks
before the response head, or a 5xx) is sent once more to another healthy replica of the model. Once
a response head arrived nothing is resent, so a client never gets a silent second
generation; what breaks after that reaches the client as the error line. A sleep-mode
replica may take the failover: it is woken first, and its keep-alive timer restarts when
the request ends (``handlers.loaded``). The request's fair turn moves with it: given back on the
failed backend, taken on the other.

It is also where a caller's ``priority`` joins the body: vLLM's request field (lower runs
earlier), sent only to a backend whose config says ``scheduling_policy: priority``.
vLLM's protocol (vllm/entrypoints/openai/chat_completion/protocol.py) says a non-zero
priority is an error without ``--scheduling-policy priority`` (the V0 engine raised it;
vLLM 0.32's FCFS queue accepts and ignores it), so any other backend gets the body as is."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from aiohttp import web

from proxy import admit, metrics
from proxy.backend import Backend, UpstreamStream
from proxy.errors import BackendError, BackendUnavailable, ConnectTimeout, ProxyError
from proxy.registry import Route
from proxy.state import CONTEXT, caller_of, live

T = TypeVar("T")


async def open_stream(request: web.Request, route: Route, path: str, body: Mapping[str, Any]) -> tuple[Route, UpstreamStream]:
    """The opened stream and the route whose ``backend`` answered."""
    request_id, priority = request[CONTEXT].request_id, caller_of(request).priority
    return await _with_failover(
        request, route, lambda backend: backend.open_stream(path, _prioritised(body, path, backend, priority), request_id)
    )


async def post_json(request: web.Request, route: Route, path: str, body: Mapping[str, Any]) -> tuple[Route, Any]:
    request_id, priority = request[CONTEXT].request_id, caller_of(request).priority
    return await _with_failover(
        request, route, lambda backend: backend.post_json(path, _prioritised(body, path, backend, priority), request_id)
    )


_PRIORITISED = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")  # vLLM's requests with ``priority``


def _prioritised(body: Mapping[str, Any], path: str, backend: Backend, priority: int | None) -> Mapping[str, Any]:
    """``body`` with the caller's priority for a priority-scheduling backend. There the proxy
    owns the field: a client's own ``priority`` (the /v1 passthrough) is replaced, or dropped
    for a caller without one, so no client can move itself ahead."""
    if backend.config.scheduling_policy != "priority" or path not in _PRIORITISED:
        return body
    if priority is None:
        return {k: v for k, v in body.items() if k != "priority"} if "priority" in body else body
    return {**body, "priority": priority}


async def _with_failover(request: web.Request, route: Route, send: Callable[[Backend], Awaitable[T]]) -> tuple[Route, T]:
    """``send`` to the route's backend; if it failed before answering, once to a replica."""
    try:
        return route, await send(route.backend)
    except ProxyError as exc:
        other = _replica(request, route, exc)
        if other is None:
            raise
    await admit.move(request, other)
    keepalive = live(request).keepalive
    if keepalive.manages(other):
        request[CONTEXT].woken.append(other)  # before begin(), which counts it in flight first
        await keepalive.begin(other)
    return _failed_over(request, route, other), await send(other)


def _replica(request: web.Request, route: Route, exc: ProxyError) -> Backend | None:
    """Another healthy replica, when ``exc`` says the backend failed rather than refused
    the request."""
    failed = isinstance(exc, BackendUnavailable | ConnectTimeout) or (isinstance(exc, BackendError) and exc.status >= 500)
    if route.managed or not failed:
        return None
    return live(request).router.pick(route.replicas, exclude={route.backend})


def _failed_over(request: web.Request, route: Route, other: Backend) -> Route:
    context = request[CONTEXT]
    context.log["failed_over_from"] = route.backend.name
    context.serve_on(other.name)
    metrics.failover(route.backend.name, other.name)
    if context.inflight is not None:
        context.inflight.move(other.name)
    return route._replace(backend=other)
