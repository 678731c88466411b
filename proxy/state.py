"""Typed application state keys, shared by the app factory and the handlers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from proxy.admission import Admitter, Ticket
from proxy.backend import Backend, Backends
from proxy.clock import Clock
from proxy.config import Config
from proxy.discovery import Discovery
from proxy.drain import Drain
from proxy.identity import Caller
from proxy.keepalive import KeepAlive
from proxy.managed.host import Host
from proxy.managed.process import Launcher
from proxy.metrics import Inflight
from proxy.monitor import Monitor
from proxy.registry import Registry
from proxy.routing import Router
from proxy.timers import Timers


@dataclass(frozen=True)
class Generation:
    """The configuration and everything built from it. A reload (SIGHUP, proxy/generation.py)
    builds a whole new one and swaps it in at once; a request keeps the one it started
    with (``live``), so it never mixes two configurations' registry and backends."""

    config: Config
    backends: Backends
    registry: Registry
    router: Router
    discovery: Discovery
    keepalive: KeepAlive
    monitor: Monitor


class Live:
    """The one holder of the current ``Generation``, read at request time."""

    def __init__(self, current: Generation) -> None:
        self.current = current


LIVE = web.AppKey("live", Live)
DRAIN = web.AppKey("drain", Drain)
CLOCK = web.AppKey("clock", Clock)
MANAGED = web.AppKey("managed", Host)  # only set when managed models are configured
LAUNCHER = web.AppKey("launcher", Launcher)  # a launcher given to create_app (tests)
ADMISSION = web.AppKey("admission", Admitter)  # fair turns per backend (proxy/admission.py)
TIMERS = web.AppKey("timers", Timers)  # the clocks create_app was given (tests pass fake ones)
TOOLS_DROPPED = web.AppKey("tools_dropped", set[str])  # models already logged as answering without tools


@dataclass
class RequestContext:
    """Per-request bookkeeping the middleware creates and handlers fill in."""

    request_id: str
    arrival_ns: int  # monotonic time the request arrived
    sent_ns: int = 0  # monotonic time the upstream request was sent
    log: dict[str, Any] = field(default_factory=dict)  # fields of the canonical log line
    response: web.StreamResponse | None = None  # a streamed response once its head is out
    caller: Caller | None = None  # who is asking, once the middleware resolved it; read by caller_of
    woken: list[Backend] = field(default_factory=list)  # sleep-mode replicas a failover began; loaded() ends them
    ticket: Ticket | None = None  # the request's turn on its backend while it holds one (proxy/admit.py)
    # Raw figures for the metrics the middleware records at the end (proxy/metrics.py):
    model: str = ""  # the registry's name of the model, once resolved
    backend: str = ""  # the backend that answered (after a failover, the replica)
    first_ns: int = 0  # monotonic time the first token (or SSE event) arrived
    prompt_tokens: int | None = None  # as vLLM counted them
    output_tokens: int | None = None
    inflight: Inflight | None = None  # counted in flight while it has a backend
    generation: Generation | None = None  # the configuration the request runs under, once read (``live``)

    def serve_on(self, backend: str) -> None:
        """The backend the request goes to (logged, and the metrics' ``backend`` label)."""
        self.backend = self.log["backend"] = backend


CONTEXT = web.RequestKey("context", RequestContext)


def caller_of(request: web.Request) -> Caller:
    """The request's caller (proxy/identity.py): as the middleware resolved it, else its
    client address."""
    context: RequestContext | None = request.get(CONTEXT)
    if context is not None and context.caller is not None:
        return context.caller
    return Caller(user=request.remote or "unknown")


def live(request: web.Request) -> Generation:
    """The configuration generation ``request`` runs under: the current one when it first
    asks, the same one for the rest of the request, whatever a reload swaps in meanwhile."""
    context: RequestContext | None = request.get(CONTEXT)
    if context is None:
        return request.app[LIVE].current
    if context.generation is None:
        context.generation = request.app[LIVE].current
    return context.generation
