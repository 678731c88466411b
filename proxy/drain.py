"""The graceful stop on SIGTERM: requests in flight finish, up to ``drain_timeout``.

aiohttp's ``BaseRunner.cleanup`` (3.14) first closes the listeners, then closes idle
keep-alive connections, then runs the ``on_shutdown`` signals, and only then waits for
and cancels what is left. ``Drain.on_shutdown`` sits in that third step: it waits until
every request the middleware registered has ended, or the timeout passes. The requests
still running are then cancelled with the drain as the reason; the middleware ends
each one with an error the client can read (a stream's final ``{"error"}`` line, or a
503 before its first byte), so nothing is cut without a word.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

log = structlog.get_logger("proxy.drain")

SHUTTING_DOWN = "server shutting down"
CUT_GRACE_S = 5.0  # after the cut, how long the cancelled requests get to write their error
# aiohttp's last step after the drain (every request has ended by then): how long it waits
# for a handler that still runs before closing its connection.
SHUTDOWN_TIMEOUT_S = 0.5


class Drain:
    def __init__(self) -> None:
        self._tasks: dict[asyncio.Task[object], int] = {}  # a connection's task → its requests in flight
        self._idle: asyncio.Event | None = None
        self._cut: set[asyncio.Task[object]] = set()
        self.started = False  # SIGTERM arrived: responses close their connections

    def enter(self) -> asyncio.Task[object] | None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks[task] = self._tasks.get(task, 0) + 1
        return task

    def leave(self, task: asyncio.Task[object] | None) -> None:
        if task is None:
            return
        left = self._tasks.pop(task, 1) - 1
        if left > 0:
            self._tasks[task] = left
        elif not self._tasks and self._idle is not None:
            self._idle.set()

    def was_cut(self, task: asyncio.Task[object] | None) -> bool:
        """Was ``task`` cancelled by the drain (and not by its client leaving)?"""
        return task is not None and task in self._cut

    @property
    def inflight(self) -> int:
        return sum(self._tasks.values())

    async def run(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for the requests in flight; cut the rest. Returns how
        many were cut."""
        self.started = True
        self._idle = asyncio.Event()
        if not self._tasks:
            return 0
        log.info("draining", inflight=self.inflight, timeout_s=timeout_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        if not self._tasks:
            return 0
        self._cut = set(self._tasks)
        log.warning("drain timeout: ending the requests still in flight", inflight=self.inflight, timeout_s=timeout_s)
        for task in self._cut:
            task.cancel(SHUTTING_DOWN)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), CUT_GRACE_S)
        return len(self._cut)
