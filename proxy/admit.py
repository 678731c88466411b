"""A request's turn on the backend it is sent to (proxy/admission.py), taken after the
backend is chosen and held on the request's context until its response ends; a
failover gives it back and takes one on the other replica."""

from __future__ import annotations

from aiohttp import web

from proxy import metrics
from proxy.admission import BUSY_TIMEOUT
from proxy.backend import Backend
from proxy.errors import ServerBusy
from proxy.state import ADMISSION, CONTEXT, caller_of, live
from proxy.turns import Limits


def limits(request: web.Request, backend: Backend) -> Limits:
    config = live(request).config
    return backend.config.turns.limits(config.max_user_concurrency, config.max_queue, config.queue_timeout,
                                       backend.max_num_seqs)  # fmt: skip


def take(request: web.Request, backend: Backend) -> bool:
    """Take a turn on ``backend`` if there is room now: a plain call, no await (the hot
    path); False when the request has to ``wait`` for one."""
    ticket = request.app[ADMISSION].enter(backend.name, limits(request, backend), caller_of(request))
    request[CONTEXT].ticket = ticket
    return ticket is not None


async def wait(request: web.Request, backend: Backend) -> None:
    """Queue for a turn on ``backend`` (``ServerBusy`` at the timeout or bound), counted
    as queued meanwhile (``ollama_proxy_queued_requests``)."""
    context = request[CONTEXT]
    try:
        with metrics.Queued(context.model, backend.name):
            ticket = await request.app[ADMISSION].wait(backend.name, limits(request, backend), caller_of(request))
    except ServerBusy as exc:
        metrics.rejected(backend.name, "queue_timeout" if exc.message == BUSY_TIMEOUT else "queue_full")
        raise
    metrics.queue_wait(context.model, backend.name, ticket.waited)
    context.log["queue_ms"] = round(context.log.get("queue_ms", 0.0) + ticket.waited * 1000, 1)
    context.ticket = ticket


def give_back(request: web.Request) -> None:
    context = request[CONTEXT]
    if context.ticket is not None:
        request.app[ADMISSION].release(context.ticket)
        context.ticket = None


async def move(request: web.Request, backend: Backend) -> None:
    """A failover: the failed backend's turn goes back before one is taken on ``backend``."""
    give_back(request)
    if not take(request, backend):
        await wait(request, backend)
