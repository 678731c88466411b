"""What every handler does first: parse the body the Ollama way and resolve the model."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from proxy import admit, errors
from proxy.body import parse_json, read_body
from proxy.metrics import Inflight
from proxy.registry import Registry, Route
from proxy.state import CONTEXT, MANAGED, live
from proxy.translate.common import keep_alive_seconds


async def read_json(request: web.Request, go_type: str) -> dict[str, Any]:
    """The body as JSON whatever the Content-Type (``curl -d`` sends form-encoded);
    errors are 400s with Go's wording, never 422 (Ollama's server/routes.go, gin)."""
    raw = await read_body(request)
    if not raw.strip():
        raise errors.BadRequest("missing request body")
    body = parse_json(raw)
    if body is None:
        return {}  # Go decodes `null` into an empty request
    if not isinstance(body, dict):
        kind = {list: "array", str: "string", bool: "bool"}.get(type(body), "number")
        raise errors.BadRequest(f"json: cannot unmarshal {kind} into Go value of type api.{go_type}")
    return body


def field(body: dict[str, Any], key: str, kind: type | tuple[type, ...], go_type: str, go_field: str) -> Any:
    """A top-level field checked for its JSON type, as Go's decoder checks it."""
    value = body.get(key)
    if value is None or (isinstance(value, kind) and not (isinstance(value, bool) and bool not in _tuple(kind))):
        return value
    kind_name = {str: "string", bool: "bool", list: "array", dict: "object"}
    got = kind_name.get(type(value), "number")
    raise errors.BadRequest(f"json: cannot unmarshal {got} into Go struct field {go_type}.{key} of type {go_field}")


def stream_flag(body: dict[str, Any], go_type: str) -> bool:
    value = field(body, "stream", bool, go_type, "bool")
    return True if value is None else value  # a missing `stream` means true


async def resolve(request: web.Request, name: str, endpoint: str) -> Route:
    request[CONTEXT].log["model"] = name
    registry = live(request).registry
    route = registry.resolve(name)
    if route is None:
        await live(request).discovery.refresh_if_stale()
        route = registry.resolve(name)
    if route is None and registry.library_repo(name) is not None:
        # A library name not downloaded yet: older Ollama servers' text; `ollama run` pulls on a 404.
        raise errors.ModelNotFound(f"model '{name}' not found, try pulling it first")
    if route is None:
        raise unknown(registry, endpoint, name)
    context = request[CONTEXT]
    context.model = route.facts.name
    context.serve_on(route.backend.name)
    return route


def unknown(registry: Registry, endpoint: str, name: str) -> errors.ProxyError:
    """Ollama's 404 only when every backend answered its listing and none serves ``name``;
    otherwise a 502 naming the unreachable backends, so clients do not offer to pull."""
    down = registry.unreachable()
    if down:
        return errors.not_reachable([(s.config.name, s.config.url, s.error) for s in down])
    return errors.not_found(endpoint, name)


def model_name(body: dict[str, Any], go_type: str) -> str:
    """``model``, or the deprecated ``name`` some clients still send."""
    value = body.get("model") or body.get("name") or ""
    if not isinstance(value, str):
        raise errors.BadRequest(f"json: cannot unmarshal number into Go struct field {go_type}.model of type string")
    return value


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


@contextlib.asynccontextmanager
async def loaded(
    request: web.Request, route: Route, keep_alive: Any, session: str | None = None, turn: bool = True
) -> AsyncIterator[Route]:
    """Around a request that needs the model, yielding the route to send it on, its
    ``backend`` the replica the router chose (``session`` keeps a conversation on one): a
    managed model is started if needed and counted busy until the request (its stream
    included) ends; with ``turn`` the request takes its fair turn on the backend and holds
    it as long (proxy/admit.py); a sleeping backend is woken first and its keep-alive
    timer restarted at the end (proxy/keepalive.py). The request counts in flight on its
    model and backend meanwhile (``ollama_proxy_inflight_requests``)."""
    seconds = keep_alive_seconds(keep_alive)
    context = request[CONTEXT]
    if route.managed:
        host = request.app[MANAGED]
        began = time.monotonic_ns()
        lease = await host.acquire(route.facts.name, seconds)
        if lease.started:
            context.log["model_start_ms"] = round((time.monotonic_ns() - began) / 1e6, 1)
        try:
            generation = live(request)
            backend = generation.backends.at(route.backend.config, lease.url.rstrip("/"))
            running = route._replace(backend=backend, replicas=(backend,))
            if turn:  # without --max-num-seqs in its args: its /server_info, if in dev mode (asked once)
                await backend.learn_batch_size()
            if turn and not admit.take(request, backend):
                await admit.wait(request, backend)
            registry = generation.registry
            if not registry.knows_context(route.facts.name):
                with contextlib.suppress(errors.ProxyError):  # only the context length is missing then
                    registry.update_managed(route.facts.name, await backend.list_models())
            with Inflight(route.facts.name, backend.name) as context.inflight:
                yield running
        finally:
            admit.give_back(request)
            host.release(lease, seconds)
        return
    chosen = live(request).router.pick(route.replicas, session) or route.backend
    route = route._replace(backend=chosen)
    context.serve_on(chosen.name)
    keepalive = live(request).keepalive
    woken = request[CONTEXT].woken
    if turn and not admit.take(request, chosen):
        await admit.wait(request, chosen)
    try:
        await keepalive.begin(route.backend)
        with Inflight(route.facts.name, chosen.name) as context.inflight:
            yield route
    finally:
        admit.give_back(request)
        for backend in [route.backend, *woken]:  # and the sleep-mode replicas a failover woke
            keepalive.end(backend, seconds)
        woken.clear()
