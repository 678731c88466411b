"""Keeps the registry current: lists every backend's ``/v1/models`` at start-up and then
every ``refresh_interval`` seconds, so ``/api/tags`` and ``/api/ps`` answer from memory
and a slow backend never stalls the pages that poll them."""

from __future__ import annotations

import asyncio

import structlog

from proxy.backend import Backend
from proxy.errors import ProxyError
from proxy.registry import Registry
from proxy.timers import SYSTEM, Timers

log = structlog.get_logger("proxy.discovery")


class Discovery:
    def __init__(self, registry: Registry, interval: float, timers: Timers = SYSTEM) -> None:
        self._registry = registry
        self._interval = interval
        self._timers = timers
        self._last = -float("inf")  # monotonic seconds of the last completed refresh
        self._lock = asyncio.Lock()
        self._asking: set[asyncio.Task[None]] = set()

    async def refresh(self) -> None:
        async with self._lock:
            await asyncio.gather(*(self._refresh_one(s.backend) for s in self._registry.backends))
            self._last = self._timers.monotonic()

    async def refresh_if_stale(self, min_age_s: float = 1.0) -> None:
        """On an unknown model: look again, in case a backend gained it since."""
        if self._timers.monotonic() - self._last > min_age_s:
            await self.refresh()

    async def run(self) -> None:
        try:
            while True:
                await self._timers.sleep(self._interval)
                await self.refresh()
        finally:
            for task in self._asking:
                task.cancel()

    async def _refresh_one(self, backend: Backend) -> None:
        try:
            cards = await backend.list_models()
        except ProxyError as exc:
            state = next(s for s in self._registry.backends if s.config.name == backend.name)
            if state.up or state.error != exc.message:
                log.warning("backend down", backend=backend.name, error=exc.message)
            self._registry.mark_down(backend.name, exc.message)
            return
        new = self._registry.update(backend.name, cards, self._timers.wall_ns())
        if backend.max_num_seqs is None:  # in the background: vLLM's /server_info can take seconds
            task = asyncio.get_running_loop().create_task(backend.learn_batch_size())
            self._asking.add(task)
            task.add_done_callback(self._asking.discard)
        for served in new:
            capabilities = await backend.probe_capabilities(served)
            self._registry.set_capabilities(backend.name, served, capabilities)
            log.info("model discovered", backend=backend.name, served=served, capabilities=list(capabilities))
