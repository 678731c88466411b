"""Timers whose time moves only when a test says so (proxy/timers.py)."""

from __future__ import annotations

import asyncio

from proxy.timers import Timers


class FakeTimers:
    """``monotonic``/``wall_ns`` read ``now``; ``sleep`` waits until ``advance`` passes its deadline."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self.now

    def wall_ns(self) -> int:
        return int(self.now * 1e9)

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move time on and let every timer that came due run until it waits again."""
        self.now += seconds
        due = [f for deadline, f in self._sleepers if deadline <= self.now]
        self._sleepers = [(d, f) for d, f in self._sleepers if d > self.now]
        for future in due:
            if not future.done():
                future.set_result(None)
        for _ in range(5):
            await asyncio.sleep(0)

    def timers(self) -> Timers:
        return Timers(monotonic=self.monotonic, wall_ns=self.wall_ns, sleep=self.sleep)
