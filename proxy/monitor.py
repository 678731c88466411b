"""Active health and load: every ``tick`` seconds, probes the backends that are out once
their cool-down or probe interval is over (``GET /health``), and scrapes ``/metrics`` of
the backends that are replicas of some model every ``metrics_interval`` seconds (the
least-loaded strategy reads it). Runs on injected timers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import structlog

from proxy.backend import Backend
from proxy.errors import ProxyError
from proxy.timers import SYSTEM, Timers

log = structlog.get_logger("proxy.monitor")


class Monitor:
    def __init__(
        self,
        backends: Callable[[], Iterable[Backend]],
        replicated: Callable[[], set[str]],
        metrics_interval: float,
        timers: Timers = SYSTEM,
    ) -> None:
        self._backends = backends
        self._replicated = replicated
        self._metrics_interval = metrics_interval
        self._timers = timers
        self._scraped: dict[str, float] = {}  # backend name → monotonic time of the last scrape

    async def check(self) -> None:
        """One round: the probes that are due and the scrapes that are due, concurrently."""
        now = self._timers.monotonic()
        replicated = self._replicated()
        work: list[Coroutine[Any, Any, object]] = []
        for backend in self._backends():
            if backend.health.probe_due(now):
                work.append(backend.probe())
            elif backend.health.up and backend.name in replicated and self._scrape_due(backend.name, now):
                self._scraped[backend.name] = now
                work.append(self._scrape(backend))
        await asyncio.gather(*work)

    def _scrape_due(self, name: str, now: float) -> bool:
        return now - self._scraped.get(name, -float("inf")) >= self._metrics_interval

    async def run(self, tick_s: float = 0.5) -> None:
        while True:
            await self._timers.sleep(tick_s)
            await self.check()

    @staticmethod
    async def _scrape(backend: Backend) -> None:
        try:
            await backend.scrape()
        except ProxyError as exc:  # a server without /metrics: routed on the proxy's own counts
            log.debug("metrics scrape failed", backend=backend.name, error=exc.message)
