"""Admission: a request takes a turn on its backend before it is sent (proxy/turns.py
has the rules), and holds it until its response, stream included, has ended.

``Admission`` keeps one ``Turns`` per backend in this process. ``enter`` is the hot
path: a plain call, no await, when there is room. ``wait`` queues; it ends when a turn
is given, with ``ServerBusy`` at the queue timeout, or at once when the request is
cancelled (the client hung up). With ``--workers N`` the workers ask the supervisor's
single ``Admission`` instead (proxy/admission_remote.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol

from proxy.errors import ServerBusy
from proxy.identity import Caller
from proxy.timers import SYSTEM, Timers
from proxy.turns import Limits, Snapshot, Turns

BUSY_TIMEOUT = "server busy, please try again.  timed out waiting for a free slot on the model's vLLM backend"


@dataclass
class Ticket:
    """A request's turn on ``backend``; give it back with ``release`` (once)."""

    backend: str
    user: str
    waited: float = 0.0  # seconds spent queued
    handle: Any = None  # for a remote admission: the connection that holds the turn
    released: bool = field(default=False, repr=False)


class Admitter(Protocol):
    def enter(self, backend: str, limits: Limits, caller: Caller) -> Ticket | None:
        """A turn now, without waiting, or None."""

    async def wait(self, backend: str, limits: Limits, caller: Caller) -> Ticket:
        """Queue for a turn."""

    def release(self, ticket: Ticket) -> None:
        """The request ended."""

    def snapshot(self) -> dict[str, Snapshot]:
        """Per backend: in flight, queued, waits so far (this process's state)."""

    async def figures(self) -> dict[str, Snapshot]:
        """The same for the whole service (with --workers N: the supervisor's state)."""

    def close(self) -> None:
        """Stop the timers."""


class Admission:
    def __init__(self, timers: Timers = SYSTEM) -> None:
        self._timers = timers
        self._turns: dict[str, Turns] = {}
        self._sweepers: dict[str, asyncio.Task[None]] = {}

    def enter(self, backend: str, limits: Limits, caller: Caller) -> Ticket | None:
        turns = self._get(backend, limits)
        return Ticket(backend, caller.user) if turns.enter(caller.user, caller.weight) else None

    async def wait(self, backend: str, limits: Limits, caller: Caller) -> Ticket:
        turns = self._get(backend, limits)
        now = self._timers.monotonic()
        if turns.enter(caller.user, caller.weight):  # a turn freed since ``enter``
            return Ticket(backend, caller.user)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = turns.wait(caller.user, caller.weight, now, future)
        self._sweep(backend, turns)
        try:
            await future
        except BaseException:
            if waiter.admitted:  # cancelled just as its turn came: pass the turn on
                self._give_back(turns, caller.user)
            turns.leave(waiter)
            raise
        return Ticket(backend, caller.user, waited=self._timers.monotonic() - now)

    def release(self, ticket: Ticket) -> None:
        if ticket.released:
            return
        ticket.released = True
        turns = self._turns.get(ticket.backend)
        if turns is not None:
            self._give_back(turns, ticket.user)

    def snapshot(self) -> dict[str, Snapshot]:
        return {name: turns.snapshot() for name, turns in self._turns.items()}

    async def figures(self) -> dict[str, Snapshot]:
        return self.snapshot()

    def close(self) -> None:
        for task in self._sweepers.values():
            task.cancel()

    def _get(self, backend: str, limits: Limits) -> Turns:
        turns = self._turns.get(backend)
        if turns is None:
            turns = self._turns[backend] = Turns(limits)
        elif turns.limits != limits:
            self._wake(turns.resize(limits, self._timers.monotonic()))
        return turns

    def _give_back(self, turns: Turns, user: str) -> None:
        self._wake(turns.release(user, self._timers.monotonic()))

    @staticmethod
    def _wake(admitted: list[Any]) -> None:
        for waiter in admitted:
            if not waiter.handle.done():
                waiter.handle.set_result(None)

    def _sweep(self, backend: str, turns: Turns) -> None:
        """One timer task per backend while requests wait: ends waits at their deadline."""
        task = self._sweepers.get(backend)
        if task is None or task.done():
            self._sweepers[backend] = asyncio.get_running_loop().create_task(self._expire(turns))

    async def _expire(self, turns: Turns) -> None:
        while (deadline := turns.next_deadline()) is not None:
            delay = deadline - self._timers.monotonic()
            if delay > 0:
                await self._timers.sleep(delay)
            for waiter in turns.expired(self._timers.monotonic()):
                if not waiter.handle.done():
                    waiter.handle.set_exception(ServerBusy(BUSY_TIMEOUT))
