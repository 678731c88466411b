"""What the handlers need from whoever runs the managed models: the in-process
``Scheduler`` (one worker) or a client of the worker that owns them (``--workers N``).
Also the clock the scheduler's timers run on, injected so tests can advance it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.managed.process import LaunchSpec


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(frozen=True)
class Plan:
    """One managed model as the scheduler sees it."""

    name: str  # Ollama display name; the key of every call
    spec: LaunchSpec
    share: float = 1.0  # fraction of its device
    keep_alive: float | None = None  # its default; None = the scheduler's
    pinned: bool = False
    preload: bool = False


@dataclass(frozen=True)
class Lease:
    """A request's hold on a running model; give it back with ``release``."""

    name: str
    url: str
    generation: int  # which start of the model this lease belongs to
    started: bool = False  # this request waited for the start
    handle: Any = None  # for remote schedulers: the connection that holds the lease


@dataclass(frozen=True)
class Loaded:
    """A running model, for /api/ps."""

    name: str
    url: str
    expires_at: float | None  # epoch seconds; None = never
    share: float
    device: str


class Host(Protocol):
    async def acquire(self, name: str, keep_alive: float | None = None) -> Lease:
        """Wait until ``name`` runs (starting it if needed); count one request on it."""

    def release(self, lease: Lease, keep_alive: float | None = None) -> None:
        """The request on ``lease`` ended (its stream included)."""

    async def unload(self, name: str) -> None:
        """Stop ``name`` now, or when its last request ends."""

    async def loaded(self) -> list[Loaded]:
        """The running models."""

    async def preload(self) -> None:
        """Start the models marked ``preload`` (the owner of the processes does it)."""

    async def close(self) -> None:
        """The worker stops: the owner stops every process."""
