"""The aiohttp application factory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from proxy import admission_remote, auth, generation, library_routes, metrics_http, openai_routes, routes
from proxy.admission import Admission
from proxy.body import MAX_BODY_BYTES, expect_continue
from proxy.clock import Clock
from proxy.config import Config
from proxy.cors import Cors
from proxy.drain import Drain
from proxy.generation import ENGINE, Engine
from proxy.managed import library, service
from proxy.managed.process import Launcher
from proxy.middleware import canonical, inflight_cap
from proxy.state import ADMISSION, CLOCK, DRAIN, LAUNCHER, LIVE, MANAGED, TIMERS, TOOLS_DROPPED, Live
from proxy.timers import SYSTEM, Timers


def create_app(config: Config, launcher: Launcher | None = None, *, timers: Timers = SYSTEM) -> web.Application:
    """``launcher`` starts managed models' processes and ``timers`` run discovery and
    keep-alive (tests pass fake ones)."""
    cors = Cors(config.origins)
    app = web.Application(
        middlewares=[canonical, auth.identify, cors.middleware, inflight_cap()],
        client_max_size=MAX_BODY_BYTES,
        # proxy/body.py inflates gzip/deflate itself, bounded, and answers any other coding
        # with a JSON 400; aiohttp's parser would answer those with plain text.
        handler_args={"auto_decompress": False},
    )
    app.on_response_prepare.append(cors.on_prepare)
    app[LIVE] = live = Live(generation.build(config, timers))
    app[ENGINE] = Engine(live, timers)
    app[DRAIN] = Drain()
    app[TIMERS] = timers
    app[CLOCK] = Clock()
    # One fair-turn state: this process's, or with --workers N the supervisor's. It outlives
    # a reload (queued requests keep their place); the limits are read per request.
    app[ADMISSION] = admission_remote.Client(config.admission_socket) if config.admission_socket else Admission(timers)
    app[TOOLS_DROPPED] = set()
    if launcher is not None:
        app[LAUNCHER] = launcher
    app.cleanup_ctx.append(_backends)
    app.on_shutdown.append(_drain)
    for table in (routes.routes, openai_routes.routes, library_routes.routes):
        app.add_routes(_answering_expect(table))
    metrics_http.on_main_port(app, config)
    return app


def _answering_expect(table: web.RouteTableDef) -> list[web.RouteDef]:
    """The routes with ``body.expect_continue`` as their ``Expect: 100-continue`` handler."""
    out = []
    for route in table:
        assert isinstance(route, web.RouteDef)  # the tables hold handlers only, no static files
        out.append(web.RouteDef(route.method, route.path, route.handler, {**route.kwargs, "expect_handler": expect_continue}))
    return out


async def reload(app: web.Application, config: Config) -> None:
    """Swap in ``config`` (already merged with the running one, proxy/reconfig.py) without
    dropping a request in flight (proxy/generation.py). Managed models keep running under
    the host they started in."""
    await app[ENGINE].reload(config)


async def _backends(app: web.Application) -> AsyncIterator[None]:
    engine = app[ENGINE]
    config = app[LIVE].current.config
    try:
        await engine.start()
    except BaseException:  # SIGTERM during the first discovery: close what it opened
        app[ADMISSION].close()
        await engine.close()
        raise
    managed_on = bool(library.managed(config))
    preload = None
    if managed_on:
        app[MANAGED] = managed = service.host(config, app.get(LAUNCHER))
        preload = asyncio.create_task(managed.preload())
    yield
    if preload is not None:
        preload.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await preload
    if managed_on:
        await app[MANAGED].close()  # stops every vLLM this process started
    app[ADMISSION].close()
    await engine.close()


async def _drain(app: web.Application) -> None:
    await app[DRAIN].run(app[LIVE].current.config.service.drain_timeout)
