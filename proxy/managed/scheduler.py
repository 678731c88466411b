"""Which managed models run, Ollama's way (server/sched.go): start on the first request,
one start shared by every concurrent waiter, stop after ``keep_alive`` idle, evict the
least recently used idle model when a new one needs room, queue (bounded, with a
deadline) when nothing can be freed, and notice a vLLM that dies.

Room is counted per device: the ``gpu_share`` of every model that is starting, running
or stopping on it must stay <= 1.0, and at most ``max_loaded`` models (0: no limit) run
at once. A model with requests in flight, or ``pinned``, is never stopped to make room.

No I/O of its own: processes come from the injected ``Launcher``, time from the injected
``Clock`` (tests pass a fake one and advance it).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog

from proxy import metrics
from proxy.errors import ModelLoadFailed, ProxyError, ServerBusy
from proxy.managed.host import Clock, Lease, Loaded, Plan, SystemClock
from proxy.managed.process import Child, Launcher, StartFailed

log = structlog.get_logger("proxy.managed")

STOP_GRACE_S = 10.0  # SIGTERM → SIGKILL
CRASH_WINDOW_S = 60.0  # a child that dies sooner than this after starting counts as a repeated failure
MAX_BACKOFF_S = 60.0


@dataclass(eq=False)
class _Slot:
    plan: Plan
    state: str = "stopped"  # stopped | starting | running | stopping
    child: Child | None = None
    generation: int = 0
    inflight: int = 0
    waiting: int = 0  # requests waiting for the start in progress
    keep_alive: float = 0.0  # the current session's (last request's) keep_alive
    last_used: float = 0.0
    deadline: float = math.inf  # monotonic; when the idle timer stops it
    started_at: float = 0.0
    failures: int = 0  # consecutive failed starts or early crashes
    not_before: float = 0.0  # monotonic; no new start before this (backoff)
    last_error: str = ""
    starting: asyncio.Future[None] | None = None
    stopping: asyncio.Task[None] | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)  # idle timer and exit watcher


class Scheduler:
    def __init__(
        self,
        plans: Iterable[Plan],
        launcher: Launcher,
        clock: Clock | None = None,
        *,
        keep_alive: float = 300.0,
        max_loaded: int = 0,
        max_queue: int = 512,
        queue_timeout: float = 60.0,
        load_timeout: float = 600.0,
    ) -> None:
        self._slots = {p.name: _Slot(p) for p in plans}
        self._launcher = launcher
        self._clock = clock or SystemClock()
        self._keep_alive = keep_alive
        self._max_loaded = max_loaded
        self._max_queue = max_queue
        self._queue_timeout = queue_timeout
        self._load_timeout = load_timeout
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False

    # -- the interface the handlers use ------------------------------------------------

    async def acquire(self, name: str, keep_alive: float | None = None) -> Lease:
        """Wait until ``name`` runs (starting it if needed) and count one request on it."""
        slot = self._slots[name]
        started = False
        queue_deadline: float | None = None
        while True:
            if self._closed:
                raise ServerBusy("the proxy is shutting down")
            if slot.state == "running":
                slot.inflight += 1
                slot.keep_alive = self._session(slot, keep_alive)
                slot.deadline = math.inf
                slot.last_used = self._clock.monotonic()
                self._cancel_tasks(slot, keep_watcher=True)
                assert slot.child is not None
                return Lease(name, slot.child.url, slot.generation, started)
            if slot.state == "starting":
                assert slot.starting is not None
                started = True
                slot.waiting += 1
                try:
                    await asyncio.shield(slot.starting)
                except BaseException:
                    slot.waiting -= 1
                    if not slot.waiting:
                        self._arm(slot)  # the last waiter left: the model still expires
                    raise
                slot.waiting -= 1  # no await until the `running` branch takes the lease
                continue
            if slot.state == "stopping":
                assert slot.stopping is not None
                await asyncio.shield(slot.stopping)
                continue
            self._check_backoff(slot)
            victims = self._room_for(slot)
            if victims is None:
                now = self._clock.monotonic()
                if queue_deadline is None:
                    if len(self._waiters) >= self._max_queue:
                        raise ServerBusy()
                    queue_deadline = now + self._queue_timeout
                await self._wait_for_room(slot, queue_deadline - now)
                continue
            self._begin_start(slot, victims)

    def release(self, lease: Lease, keep_alive: float | None = None) -> None:
        """A request on ``lease`` ended: when it was the last, the idle timer starts."""
        slot = self._slots[lease.name]
        if lease.generation != slot.generation or slot.state != "running":
            return  # that process is gone already
        slot.inflight = max(0, slot.inflight - 1)
        if keep_alive is not None:
            slot.keep_alive = keep_alive
        slot.last_used = self._clock.monotonic()
        if slot.inflight == 0:
            self._arm(slot)
            self._notify()

    async def unload(self, name: str) -> None:
        """``keep_alive: 0`` / ``ollama stop``: stop now, or when its last request ends."""
        slot = self._slots[name]
        if slot.state == "starting" and slot.starting is not None:
            with contextlib.suppress(ProxyError):
                await asyncio.shield(slot.starting)
        if slot.state != "running":
            if slot.stopping is not None:
                await asyncio.shield(slot.stopping)
            return
        slot.keep_alive = 0.0
        if slot.inflight == 0:
            await self._begin_stop(slot, "unload")

    async def loaded(self) -> list[Loaded]:
        now, wall = self._clock.monotonic(), self._clock.time()
        out = []
        for slot in self._slots.values():
            if slot.state != "running" or slot.child is None:
                continue
            if slot.plan.pinned or _forever(slot.keep_alive):
                expires: float | None = None
            elif slot.inflight:
                expires = wall + slot.keep_alive
            else:
                expires = wall + max(0.0, slot.deadline - now)
            out.append(Loaded(slot.plan.name, slot.child.url, expires, slot.plan.share, slot.plan.spec.device))
        return out

    async def preload(self) -> None:
        """Start every ``preload`` model, one after the other; failures are logged."""
        for slot in self._slots.values():
            if slot.plan.preload and not self._closed:
                try:
                    self.release(await self.acquire(slot.plan.name))
                except ProxyError as exc:
                    log.warning("preload failed", model=slot.plan.name, error=exc.message)

    async def close(self) -> None:
        """Stop every model (the proxy is stopping); waiters get 503."""
        self._closed = True
        self._notify()
        pending = [t for s in self._slots.values() for t in s.tasks]
        for task in pending:
            task.cancel()  # a start in progress stops its half-started child itself
        await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.gather(*(self._begin_stop(s, "shutdown") for s in self._slots.values() if s.state != "stopped"),
                             return_exceptions=True)  # fmt: skip

    # -- starting ----------------------------------------------------------------------

    def _begin_start(self, slot: _Slot, victims: list[_Slot]) -> None:
        """Claim the room now (no await between the check and this), then start."""
        slot.state = "starting"
        slot.generation += 1
        slot.inflight = 0
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even with no waiter left
        slot.starting = future
        stops = [self._begin_stop(v, f"making room for {slot.plan.name}") for v in victims]
        task = asyncio.create_task(self._start(slot, stops, future))
        slot.tasks.add(task)
        task.add_done_callback(slot.tasks.discard)

    async def _start(self, slot: _Slot, stops: list[asyncio.Task[None]], future: asyncio.Future[None]) -> None:
        name = slot.plan.name
        began = self._clock.monotonic()
        child: Child | None = None
        try:
            await asyncio.gather(*stops)
            log.info("starting vLLM", model=name, vllm_model=slot.plan.spec.model)
            child = await self._launcher.launch(slot.plan.spec)
            await child.ready(self._load_timeout)
        except StartFailed as exc:
            if child is not None:
                await child.stop(STOP_GRACE_S)
            slot.state, slot.starting = "stopped", None
            slot.last_error = _failure_text(name, exc.reason, exc.log_tail or (child.log_tail() if child else ()))
            self._failed(slot)
            log.warning("vLLM failed to start", model=name, reason=exc.reason, log_tail=list(exc.log_tail))
            metrics.model_load_failed(name)
            future.set_exception(ModelLoadFailed(slot.last_error))
            self._notify()
            return
        except BaseException:
            if child is not None:
                await asyncio.shield(child.stop(STOP_GRACE_S))
            slot.state, slot.starting = "stopped", None
            if not future.done():
                future.set_exception(ServerBusy("the proxy is shutting down"))
            self._notify()
            raise
        slot.child, slot.state, slot.starting = child, "running", None
        slot.started_at = slot.last_used = self._clock.monotonic()
        slot.keep_alive = self._session(slot, None)
        log.info("vLLM ready", model=name, url=child.url, pid=child.pid, load_s=round(slot.started_at - began, 3))
        metrics.model_loaded(name, slot.started_at - began)
        watcher = asyncio.create_task(self._watch(slot, child))
        slot.tasks.add(watcher)
        watcher.add_done_callback(slot.tasks.discard)
        future.set_result(None)
        if not slot.waiting:
            self._arm(slot)  # a start nobody waits for any more (client gone) still expires

    def _check_backoff(self, slot: _Slot) -> None:
        wait = slot.not_before - self._clock.monotonic()
        if wait > 0:
            raise ServerBusy(f"{slot.last_error} (the proxy tries again in {math.ceil(wait)} s)", math.ceil(wait))

    def _failed(self, slot: _Slot) -> None:
        slot.failures += 1
        slot.not_before = self._clock.monotonic() + min(MAX_BACKOFF_S, 2.0**slot.failures)

    async def _watch(self, slot: _Slot, child: Child) -> None:
        code = await child.exited()
        if slot.child is not child or slot.state != "running":
            return  # stopped on purpose
        now = self._clock.monotonic()
        tail = child.log_tail()
        slot.child, slot.state, slot.inflight = None, "stopped", 0
        self._cancel_tasks(slot, keep_watcher=True)
        slot.last_error = _failure_text(slot.plan.name, f"vLLM exited with code {code}", tail)
        if now - slot.started_at >= CRASH_WINDOW_S:
            slot.failures = 0
        if slot.failures:
            self._failed(slot)  # crashed again soon after a restart: back off
        else:
            slot.failures = 1  # the first crash: the next request restarts it at once
        log.warning("vLLM exited", model=slot.plan.name, code=code, log_tail=list(tail))
        metrics.model_unloaded(slot.plan.name, "exited")
        self._notify()

    # -- stopping ----------------------------------------------------------------------

    def _begin_stop(self, slot: _Slot, reason: str) -> asyncio.Task[None]:
        if slot.stopping is not None:
            return slot.stopping
        if slot.state == "starting":
            for task in list(slot.tasks):
                task.cancel()  # the start task stops the half-started child itself
        slot.state = "stopping"
        self._cancel_tasks(slot)
        task = asyncio.create_task(self._stop(slot, reason))
        slot.stopping = task
        return task

    async def _stop(self, slot: _Slot, reason: str) -> None:
        child = slot.child
        try:
            if child is not None:
                log.info("stopping vLLM", model=slot.plan.name, reason=reason, pid=child.pid)
                metrics.model_unloaded(slot.plan.name, reason)
                await child.stop(STOP_GRACE_S)
        finally:
            slot.child, slot.state, slot.stopping, slot.inflight = None, "stopped", None, 0
            slot.deadline = math.inf
            if reason != "shutdown" and slot.failures and self._clock.monotonic() - slot.started_at >= CRASH_WINDOW_S:
                slot.failures = 0
            self._notify()

    def _arm(self, slot: _Slot) -> None:
        """The idle timer of a model with no request in flight."""
        if slot.state != "running" or slot.inflight:
            return
        self._cancel_tasks(slot, keep_watcher=True)
        if slot.plan.pinned or _forever(slot.keep_alive):
            slot.deadline = math.inf
            return
        if slot.keep_alive == 0:
            self._begin_stop(slot, "keep_alive 0")
            return
        slot.deadline = self._clock.monotonic() + slot.keep_alive
        timer = asyncio.create_task(self._expire(slot, slot.generation, slot.keep_alive))
        timer.set_name("idle-timer")
        slot.tasks.add(timer)
        timer.add_done_callback(slot.tasks.discard)

    async def _expire(self, slot: _Slot, generation: int, seconds: float) -> None:
        await self._clock.sleep(seconds)
        if slot.generation == generation and slot.state == "running" and not slot.inflight:
            self._begin_stop(slot, "keep_alive expired")

    def _cancel_tasks(self, slot: _Slot, keep_watcher: bool = False) -> None:
        for task in list(slot.tasks):
            if (task.get_name() == "idle-timer" or not keep_watcher) and task is not asyncio.current_task():
                task.cancel()

    # -- room --------------------------------------------------------------------------

    def _session(self, slot: _Slot, keep_alive: float | None) -> float:
        if keep_alive is not None:
            return keep_alive
        return self._keep_alive if slot.plan.keep_alive is None else slot.plan.keep_alive

    def _room_for(self, slot: _Slot) -> list[_Slot] | None:
        """The idle models to stop so ``slot`` fits (LRU first), or None if it cannot."""
        device, share = slot.plan.spec.device, slot.plan.share
        others = [s for s in self._slots.values() if s is not slot and s.state != "stopped"]

        def over(victims: list[_Slot]) -> tuple[bool, bool]:
            left = [s for s in others if s not in victims]
            used = sum(s.plan.share for s in left if s.plan.spec.device == device)
            return used + share > 1.0 + 1e-9, bool(self._max_loaded) and len(left) + 1 > self._max_loaded

        victims: list[_Slot] = []
        idle = sorted((s for s in others if s.state == "running" and not s.inflight and not s.plan.pinned),
                      key=lambda s: s.last_used)  # fmt: skip
        for candidate in [None, *idle]:
            if candidate is not None:
                share_over, count_over = over(victims)
                if count_over or (share_over and candidate.plan.spec.device == device):
                    victims.append(candidate)
            if not any(over(victims)):
                return victims
        return None

    async def _wait_for_room(self, slot: _Slot, seconds: float) -> None:
        if seconds <= 0:
            raise self._no_room(slot)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        timer = asyncio.ensure_future(self._clock.sleep(seconds))
        try:
            await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        if not waiter.done():
            raise self._no_room(slot)

    def _no_room(self, slot: _Slot) -> ServerBusy:
        busy = [s.plan.name for s in self._slots.values() if s.state != "stopped" and s is not slot]
        return ServerBusy(f"server busy, please try again.  no room to load {slot.plan.name}: "
                          f"{', '.join(busy) or 'other models'} busy or pinned", 5)  # fmt: skip

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


def _forever(keep_alive: float) -> bool:
    return keep_alive < 0 or math.isinf(keep_alive)  # Ollama: negative = never unload


def _failure_text(name: str, reason: str, tail: tuple[str, ...]) -> str:
    text = f"vLLM could not start model '{name}': {reason}"
    if tail:
        text += "; last lines of its log:\n" + "\n".join(tail[-20:])
    return text
