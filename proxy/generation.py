"""A configuration ``Generation`` (proxy/state.py) built, run and retired.

``Engine`` holds the running one's background loops (discovery, keep-alive, the health
monitor). A reload builds a whole new generation (backends with their own connection
pool, registry, router, discovery, keep-alive, monitor), fills its registry with a first
discovery before anything sees it, then swaps it in at once. Requests in flight keep the
generation they started with; the old generation's loops stop at once, and its pool is
closed only once no request of it is in flight, so no stream is cut.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from aiohttp import web

from proxy import routing
from proxy.backend import Backends
from proxy.config import Config
from proxy.discovery import Discovery
from proxy.keepalive import KeepAlive
from proxy.managed import weights
from proxy.monitor import Monitor
from proxy.registry import Registry
from proxy.state import Generation, Live
from proxy.timers import Timers

log = structlog.get_logger("proxy.generation")

RETIRE_POLL_S = 0.5  # how often a retired generation looks whether its last request ended


def build(config: Config, timers: Timers, previous: Generation | None = None) -> Generation:
    backends = Backends(config, timers.monotonic)
    if previous is not None:
        backends.inherit(previous.backends)
    registry = Registry(config, backends, weights.present)
    keepalive = KeepAlive(list(backends), config.keep_alive, timers)
    router = routing.router(config.routing.strategy, config.routing.affinity)
    if previous is not None:
        registry.inherit(previous.registry)
        keepalive.inherit(previous.keepalive)
        router.inherit(previous.router)
    return Generation(
        config=config,
        backends=backends,
        registry=registry,
        router=router,
        discovery=Discovery(registry, config.refresh_interval, timers),
        keepalive=keepalive,
        monitor=Monitor(lambda: backends, registry.replicated, config.routing.metrics_interval, timers),
    )


class Engine:
    def __init__(self, live: Live, timers: Timers) -> None:
        self._live = live
        self._timers = timers
        self._tasks: list[asyncio.Task[None]] = []  # the current generation's loops
        self._retiring: dict[asyncio.Task[None], Generation] = {}
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """The first discovery (the first /api/tags already lists the models), then the loops."""
        await self._live.current.discovery.refresh()
        self._tasks = _loops(self._live.current)

    async def reload(self, config: Config) -> Generation:
        """Build, discover, then swap in a generation for ``config``; one reload at a time."""
        async with self._lock:
            old = self._live.current
            new = build(config, self._timers, old)
            try:
                await new.discovery.refresh()
            except BaseException:
                new.backends.close()
                raise
            self._live.current = new  # no await since the refresh: every request sees one or the other
            old_tasks, self._tasks = self._tasks, _loops(new)
            await _cancel(old_tasks)
            task = asyncio.create_task(self._retire(old))
            self._retiring[task] = old
            task.add_done_callback(self._retiring.pop)
            return new

    async def _retire(self, old: Generation) -> None:
        while old.backends.inflight:
            await self._timers.sleep(RETIRE_POLL_S)
        old.backends.close()
        log.debug("previous configuration retired", source=old.config.source)

    async def close(self) -> None:
        """On shutdown: stop every loop and close every generation's pool."""
        retiring = list(self._retiring.values())
        await _cancel([*self._tasks, *self._retiring])
        for generation in (*retiring, self._live.current):
            generation.backends.close()


ENGINE = web.AppKey("engine", Engine)


def _loops(generation: Generation) -> list[asyncio.Task[None]]:
    return [asyncio.create_task(generation.discovery.run()), asyncio.create_task(generation.keepalive.run()),
            asyncio.create_task(generation.monitor.run())]  # fmt: skip


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
