"""The clocks and the sleep that the proxy's timers run on (model discovery, keep-alive).

Production uses the system's; tests pass their own and advance time instead of waiting
for it (tests/fakes/timers.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Timers:
    monotonic: Callable[[], float] = time.monotonic  # seconds, for deadlines and ages
    wall_ns: Callable[[], int] = time.time_ns  # epoch nanoseconds, for timestamps clients see
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


SYSTEM = Timers()
