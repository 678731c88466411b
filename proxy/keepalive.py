"""Ollama's ``keep_alive`` on vLLM backends that run in sleep mode.

vLLM keeps its model loaded for the life of the process. A backend started with
``--enable-sleep-mode`` (and ``VLLM_SERVER_DEV_MODE=1``) can offload it on ``POST /sleep``
and reload it on ``POST /wake_up`` (vLLM's docs, features/sleep_mode). For such backends (``sleep_mode:
true`` in the config) the proxy keeps Ollama's timer: every request pushes the deadline
to ``keep_alive`` after it ends (the request's own value, else the configured default),
``keep_alive: 0`` unloads at once, and a request to a sleeping backend wakes it first,
since vLLM would hold the request until someone does.

Several workers keep their own timers; the backend is the shared truth. A worker asks
``/is_sleeping`` before forwarding when its knowledge is over a second old, and the timer
only puts a backend to sleep when vLLM reports no request running or waiting, so one
worker's timer never cuts another worker's streams short.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

import structlog

from proxy.backend import Backend
from proxy.errors import ProxyError
from proxy.timers import SYSTEM, Timers

log = structlog.get_logger("proxy.keepalive")

_FRESH_S = 1.0  # how long what /is_sleeping said is trusted


@dataclass
class _State:
    deadline: float = math.inf  # monotonic seconds; inf = no timer running
    asleep: bool = False
    checked: float = -math.inf  # monotonic time of the last /is_sleeping
    inflight: int = 0


class KeepAlive:
    def __init__(self, backends: list[Backend], default_s: float, timers: Timers = SYSTEM) -> None:
        self._timers = timers
        self._default = default_s
        self._states = {b.name: _State() for b in backends if b.config.sleep_mode}
        self._backends = {b.name: b for b in backends}
        self._locks = {name: asyncio.Lock() for name in self._states}

    def inherit(self, old: KeepAlive) -> None:
        """After a reload: the timers and locks of the sleep-mode backends both configurations
        have, shared, so the requests still running under ``old`` restart the timer this one
        acts on."""
        for name in self._states.keys() & old._states.keys():
            self._states[name], self._locks[name] = old._states[name], old._locks[name]

    def manages(self, backend: Backend) -> bool:
        return backend.name in self._states

    def is_asleep(self, backend: Backend) -> bool:
        state = self._states.get(backend.name)
        return bool(state and state.asleep)

    def expires_at(self, backend: Backend) -> float | None:
        """Seconds from now until the model unloads; None when it never does."""
        state = self._states.get(backend.name)
        if state is None or math.isinf(state.deadline):
            return None
        return max(0.0, state.deadline - self._timers.monotonic())

    async def begin(self, backend: Backend) -> None:
        """Before forwarding a request: make sure the model is loaded."""
        state = self._states.get(backend.name)
        if state is None:
            return
        state.inflight += 1
        async with self._locks[backend.name]:
            now = self._timers.monotonic()
            if state.asleep or now - state.checked > _FRESH_S:
                state.asleep = bool((await backend.get_json("/is_sleeping")).get("is_sleeping"))
                state.checked = now
            if state.asleep:
                log.info("waking backend", backend=backend.name)
                await backend.post_json("/wake_up", {})
                state.asleep = False

    def end(self, backend: Backend, keep_alive_s: float | None) -> None:
        """After a request: restart the timer (Ollama counts from the end of a request)."""
        state = self._states.get(backend.name)
        if state is None:
            return
        state.inflight = max(0, state.inflight - 1)
        seconds = self._default if keep_alive_s is None else keep_alive_s
        state.deadline = self._timers.monotonic() + seconds

    async def unload(self, backend: Backend) -> None:
        state = self._states.get(backend.name)
        if state is None or state.asleep:
            return
        async with self._locks[backend.name]:
            await backend.post_json(f"/sleep?level={backend.config.sleep_level}", {})
            state.asleep, state.deadline, state.checked = True, math.inf, self._timers.monotonic()
            log.info("backend put to sleep", backend=backend.name, level=backend.config.sleep_level)

    async def run(self, tick_s: float = 1.0) -> None:
        while True:
            await self._timers.sleep(tick_s)
            for name, state in self._states.items():
                if state.asleep or state.inflight or self._timers.monotonic() < state.deadline:
                    continue
                backend = self._backends[name]
                try:
                    if await backend.busy():
                        state.deadline = self._timers.monotonic() + tick_s  # another worker's requests
                        continue
                    await self.unload(backend)
                except ProxyError as exc:
                    log.warning("keep-alive sleep failed", backend=name, error=exc.message)
                    state.deadline = self._timers.monotonic() + 10 * tick_s
