"""A fake process launcher for the scheduler (proxy/managed/process.py's Launcher) and a
fake clock its timers run on. A child is either a bare stand-in (unit tests) or a real
fake vLLM on a socket (``serve=True``, integration tests)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from proxy.managed.process import LaunchSpec, StartFailed
from tests.fakes.vllm import FakeVLLM, Model


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, future))
        await future

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [f for t, f in self._sleepers if t <= self.now]
        self._sleepers = [(t, f) for t, f in self._sleepers if t > self.now]
        for future in due:
            if not future.done():
                future.set_result(None)
        await settle()


async def settle(rounds: int = 20) -> None:
    """Let every task that can run, run."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class FakeChild:
    def __init__(self, spec: LaunchSpec, pid: int, fail: str | None, server: FakeVLLM | None) -> None:
        self.spec = spec
        self._pid = pid
        self.fail = fail
        self.server = server
        self.ready_gate = asyncio.Event()
        self.stopped = False
        self.exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.lines = [f"INFO starting vLLM for {spec.model}", "ERROR CUDA out of memory"] if fail else ["INFO ready"]

    @property
    def url(self) -> str:
        return self.server.url if self.server else f"http://127.0.0.1:{40000 + self._pid}"

    @property
    def pid(self) -> int:
        return self._pid

    async def ready(self, timeout: float) -> None:
        await self.ready_gate.wait()
        if self.fail:
            self._exit(1)
            raise StartFailed(self.fail, tuple(self.lines))

    async def exited(self) -> int:
        return await asyncio.shield(self.exit)

    async def stop(self, grace: float) -> None:
        self.stopped = True
        if self.server:
            await self.server.stop()
        self._exit(-15)

    def log_tail(self, lines: int = 20) -> tuple[str, ...]:
        return tuple(self.lines[-lines:])

    async def crash(self, code: int = -9) -> None:
        """The process dies on its own (kill -9, segfault, OOM): its connections drop."""
        if self.server:
            runner = self.server._runner
            assert runner is not None and runner.server is not None
            for handler in list(runner.server.connections):
                if handler.transport is not None:
                    handler.transport.abort()
            await self.server.stop()
        self._exit(code)

    def _exit(self, code: int) -> None:
        if not self.exit.done():
            self.exit.set_result(code)


class FakeLauncher:
    """``auto_ready``: children are ready at once; otherwise a test opens ``ready_gate``.
    ``fail``: model → the reason its start fails. ``serve``: each child is a real fake
    vLLM serving the spec's served name (``models`` maps it to a Model, default chat)."""

    def __init__(self, auto_ready: bool = True, serve: bool = False, models: dict[str, Model] | None = None) -> None:
        self.auto_ready = auto_ready
        self.serve = serve
        self.models = models or {}
        self.fail: dict[str, str] = {}
        self.launched: list[FakeChild] = []
        self.on_launch: Callable[[FakeChild], Any] | None = None

    async def launch(self, spec: LaunchSpec) -> FakeChild:
        server = None
        if self.serve:
            server = FakeVLLM({spec.served: self.models.get(spec.served, Model())})
            await server.start()
        child = FakeChild(spec, 100 + len(self.launched), self.fail.get(spec.model), server)
        self.launched.append(child)
        if self.on_launch is not None:  # e.g. to set up the child's fake vLLM before its first request
            self.on_launch(child)
        if self.auto_ready:
            child.ready_gate.set()
        return child

    def running(self) -> list[FakeChild]:
        return [c for c in self.launched if not c.exit.done()]

    def count(self, model: str) -> int:
        return sum(1 for c in self.launched if c.spec.model == model)
