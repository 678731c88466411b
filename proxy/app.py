"""The aiohttp application factory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from proxy import admission_remote, auth, library_routes, metrics_http, openai_routes, routes, routing
from proxy.admission import Admission
from proxy.backend import Backends
from proxy.body import MAX_BODY_BYTES
from proxy.clock import Clock
from proxy.config import Config
from proxy.cors import Cors
from proxy.discovery import Discovery
from proxy.keepalive import KeepAlive
from proxy.managed import library, service, weights
from proxy.managed.process import Launcher
from proxy.middleware import canonical, inflight_cap
from proxy.monitor import Monitor
from proxy.registry import Registry
from proxy.state import (
    ADMISSION,
    BACKENDS,
    CLOCK,
    CONFIG,
    DISCOVERY,
    KEEPALIVE,
    LAUNCHER,
    MANAGED,
    REGISTRY,
    ROUTER,
    TOOLS_DROPPED,
)
from proxy.timers import SYSTEM, Timers


def create_app(config: Config, launcher: Launcher | None = None, *, timers: Timers = SYSTEM) -> web.Application:
    """``launcher`` starts managed models' processes and ``timers`` run discovery and
    keep-alive (tests pass fake ones)."""
    cors = Cors(config.origins)
    app = web.Application(
        middlewares=[canonical, auth.identify, cors.middleware, inflight_cap(config.max_inflight)], client_max_size=MAX_BODY_BYTES
    )
    app.on_response_prepare.append(cors.on_prepare)
    app[CONFIG] = config
    app[BACKENDS] = backends = Backends(config, timers.monotonic)
    app[REGISTRY] = Registry(config, backends, weights.present)
    app[ROUTER] = routing.router(config.routing.strategy, config.routing.affinity)
    app[CLOCK] = Clock()
    # One fair-turn state: this process's, or with --workers N the supervisor's.
    app[ADMISSION] = admission_remote.Client(config.admission_socket) if config.admission_socket else Admission(timers)
    app[TOOLS_DROPPED] = set()
    if launcher is not None:
        app[LAUNCHER] = launcher
    app.cleanup_ctx.append(lambda app: _backends(app, timers))
    app.add_routes(routes.routes)
    app.add_routes(openai_routes.routes)
    app.add_routes(library_routes.routes)
    metrics_http.on_main_port(app, config)
    return app


async def _backends(app: web.Application, timers: Timers) -> AsyncIterator[None]:
    config = app[CONFIG]
    backends, registry = app[BACKENDS], app[REGISTRY]
    app[DISCOVERY] = discovery = Discovery(registry, config.refresh_interval, timers)
    await discovery.refresh()  # serve the first /api/tags with models already listed
    app[KEEPALIVE] = keepalive = KeepAlive(list(backends), config.keep_alive, timers)
    monitor = Monitor(lambda: backends, registry.replicated, config.routing.metrics_interval, timers)
    tasks = [asyncio.create_task(discovery.run()), asyncio.create_task(keepalive.run()), asyncio.create_task(monitor.run())]
    managed_on = bool(library.managed(config))
    if managed_on:
        app[MANAGED] = managed = service.host(config, app.get(LAUNCHER))
        tasks.append(asyncio.create_task(managed.preload()))
    yield
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if managed_on:
        await app[MANAGED].close()  # stops every vLLM this process started
    app[ADMISSION].close()
    backends.close()
