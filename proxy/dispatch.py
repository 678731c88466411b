"""Sending a request to the backend chosen for it, with one failover: a request whose
backend fails before answering (a connection that cannot be opened in time or breaks
before the response head, or a 5xx) is sent once more to another healthy replica of the model. Once
a response head arrived nothing is resent, so a client never gets a silent second
generation; what breaks after that reaches the client as the error line. A sleep-mode
replica may take the failover: it is woken first, and its keep-alive timer restarts when
the request ends (``handlers.loaded``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from aiohttp import web

from proxy.backend import Backend, UpstreamStream
from proxy.errors import BackendError, BackendUnavailable, ConnectTimeout, ProxyError
from proxy.registry import Route
from proxy.state import CONTEXT, KEEPALIVE, ROUTER

T = TypeVar("T")


async def open_stream(request: web.Request, route: Route, path: str, body: Mapping[str, Any]) -> tuple[Route, UpstreamStream]:
    """The opened stream and the route whose ``backend`` answered."""
    request_id = request[CONTEXT].request_id
    return await _with_failover(request, route, lambda backend: backend.open_stream(path, body, request_id))


async def post_json(request: web.Request, route: Route, path: str, body: Mapping[str, Any]) -> tuple[Route, Any]:
    request_id = request[CONTEXT].request_id
    return await _with_failover(request, route, lambda backend: backend.post_json(path, body, request_id))


async def _with_failover(request: web.Request, route: Route, send: Callable[[Backend], Awaitable[T]]) -> tuple[Route, T]:
    """``send`` to the route's backend; if it failed before answering, once to a replica."""
    try:
        return route, await send(route.backend)
    except ProxyError as exc:
        other = _replica(request, route, exc)
        if other is None:
            raise
    keepalive = request.app[KEEPALIVE]
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
    return request.app[ROUTER].pick(route.replicas, exclude={route.backend})


def _failed_over(request: web.Request, route: Route, other: Backend) -> Route:
    log = request[CONTEXT].log
    log["failed_over_from"], log["backend"] = route.backend.name, other.name
    return route._replace(backend=other)
