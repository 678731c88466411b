"""The managed-model scheduler against a fake launcher and a fake clock: starts, shared
waits, failures, room per device and max_loaded, LRU eviction, the bounded queue,
keep_alive timers and crashes. No test sleeps: the clock is advanced."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.errors import ModelLoadFailed, ServerBusy
from proxy.managed.host import Plan
from proxy.managed.process import LaunchSpec
from proxy.managed.scheduler import Scheduler
from tests.fakes.launcher import FakeClock, FakeLauncher, settle


def plan(name: str, share: float = 1.0, device: str = "0", **kw: Any) -> Plan:
    spec = LaunchSpec(name=name, model=f"org/{name}", served=name, command=("python",), device=device)
    return Plan(name=name, spec=spec, share=share, **kw)


def make(*plans: Plan, launcher: FakeLauncher | None = None, **kw: Any) -> tuple[Scheduler, FakeLauncher, FakeClock]:
    launcher = launcher or FakeLauncher()
    clock = FakeClock()
    kw.setdefault("keep_alive", 300.0)
    return Scheduler(plans, launcher, clock, **kw), launcher, clock


async def running(scheduler: Scheduler) -> list[str]:
    return sorted(m.name for m in await scheduler.loaded())


async def test_concurrent_requests_share_one_start() -> None:
    scheduler, launcher, _ = make(plan("a"), launcher=FakeLauncher(auto_ready=False))
    waiters = [asyncio.create_task(scheduler.acquire("a")) for _ in range(5)]
    await settle()
    assert len(launcher.launched) == 1 and not any(w.done() for w in waiters)
    launcher.launched[0].ready_gate.set()
    leases = await asyncio.gather(*waiters)
    assert {lease.url for lease in leases} == {launcher.launched[0].url}
    assert all(lease.started for lease in leases)
    assert launcher.count("org/a") == 1 and await running(scheduler) == ["a"]


async def test_a_failed_start_answers_every_waiter_with_the_log_tail_and_is_not_retried_at_once() -> None:
    launcher = FakeLauncher(auto_ready=False)
    launcher.fail["org/a"] = "vLLM exited with code 1"
    scheduler, _, clock = make(plan("a"), launcher=launcher)
    waiters = [asyncio.create_task(scheduler.acquire("a")) for _ in range(3)]
    await settle()
    launcher.launched[0].ready_gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    for result in results:
        assert isinstance(result, ModelLoadFailed) and result.status == 500
        assert "vLLM could not start model 'a': vLLM exited with code 1" in result.message
        assert "ERROR CUDA out of memory" in result.message  # vLLM's own last lines
    with pytest.raises(ServerBusy) as again:  # backing off: no second process
        await scheduler.acquire("a")
    assert "CUDA out of memory" in again.value.message and again.value.retry_after >= 1
    assert len(launcher.launched) == 1 and await running(scheduler) == []
    await clock.advance(again.value.retry_after)
    del launcher.fail["org/a"]
    task = asyncio.create_task(scheduler.acquire("a"))
    await settle()
    launcher.launched[1].ready_gate.set()
    assert (await task).url == launcher.launched[1].url


@pytest.mark.parametrize(
    ("request_keep_alive", "model_keep_alive", "still_up_after", "down_after"),
    [
        pytest.param(None, None, 299.0, 2.0, id="the default keep_alive"),
        pytest.param(10.0, None, 9.0, 2.0, id="the request's keep_alive"),
        pytest.param(None, 60.0, 59.0, 2.0, id="the model's keep_alive"),
        pytest.param(0.0, None, None, 0.0, id="0 unloads at once"),
        pytest.param(-1.0, None, 10.0**9, None, id="negative keeps it forever"),
    ],
)
async def test_idle_timer(request_keep_alive: float | None, model_keep_alive: float | None,
                          still_up_after: float | None, down_after: float | None) -> None:  # fmt: skip
    scheduler, launcher, clock = make(plan("a", keep_alive=model_keep_alive))
    lease = await scheduler.acquire("a", request_keep_alive)
    await clock.advance(10_000)  # a request in flight is never stopped by its timer
    assert await running(scheduler) == ["a"]
    scheduler.release(lease, request_keep_alive)
    await settle()
    if still_up_after is not None:
        await clock.advance(still_up_after)
        assert await running(scheduler) == ["a"]
    if down_after is not None:
        await clock.advance(down_after)
        assert await running(scheduler) == [] and launcher.launched[0].stopped


async def test_a_new_request_restarts_the_idle_timer() -> None:
    scheduler, _, clock = make(plan("a"), keep_alive=10.0)
    scheduler.release(await scheduler.acquire("a"))
    await clock.advance(8)
    scheduler.release(await scheduler.acquire("a"))
    await clock.advance(8)
    assert await running(scheduler) == ["a"]
    (loaded,) = await scheduler.loaded()
    assert loaded.expires_at == pytest.approx(clock.time() + 2)


async def test_max_loaded_evicts_the_least_recently_used_idle_model() -> None:
    scheduler, launcher, clock = make(plan("a", share=0.1), plan("b", share=0.1), plan("c", share=0.1), max_loaded=2)
    scheduler.release(await scheduler.acquire("a"))
    await clock.advance(1)
    scheduler.release(await scheduler.acquire("b"))
    await clock.advance(1)
    scheduler.release(await scheduler.acquire("a"))  # a is now the most recently used
    scheduler.release(await scheduler.acquire("c"))
    assert await running(scheduler) == ["a", "c"]
    assert [c.spec.name for c in launcher.launched if c.stopped] == ["b"]


@pytest.mark.parametrize(
    ("plans", "expected_running"),
    [
        pytest.param([("a", 0.5, "0"), ("b", 0.5, "0")], ["a", "b"], id="two halves share one card"),
        pytest.param([("a", 0.6, "0"), ("b", 0.5, "0")], ["b"], id="over one card: the idle one goes"),
        pytest.param([("a", 1.0, "0"), ("b", 1.0, "1")], ["a", "b"], id="one card per model"),
    ],
)
async def test_gpu_share_per_device(plans: list[tuple[str, float, str]], expected_running: list[str]) -> None:
    scheduler, _, _ = make(*(plan(n, share=s, device=d) for n, s, d in plans))
    for name, _, _ in plans:
        scheduler.release(await scheduler.acquire(name))
    assert await running(scheduler) == expected_running


async def test_busy_or_pinned_models_are_never_evicted_the_request_waits_then_gets_503() -> None:
    scheduler, launcher, clock = make(plan("a"), plan("p", pinned=True, device="1"), plan("b"), plan("q", device="1"),
                                      queue_timeout=30.0)  # fmt: skip
    busy = await scheduler.acquire("a")  # in flight
    scheduler.release(await scheduler.acquire("p"))  # idle but pinned
    waiting = [asyncio.create_task(scheduler.acquire(n)) for n in ("b", "q")]
    await settle()
    await clock.advance(29)
    assert not any(w.done() for w in waiting)  # queued, not refused at once
    await clock.advance(2)
    for task in waiting:
        with pytest.raises(ServerBusy) as info:
            await task
        assert info.value.status == 503 and info.value.retry_after >= 1
    assert await running(scheduler) == ["a", "p"] and len(launcher.launched) == 2
    scheduler.release(busy)


async def test_a_queued_request_starts_when_the_busy_model_goes_idle() -> None:
    scheduler, launcher, _ = make(plan("a"), plan("b"))
    busy = await scheduler.acquire("a")
    waiting = asyncio.create_task(scheduler.acquire("b"))
    await settle()
    assert not waiting.done()
    scheduler.release(busy)
    lease = await asyncio.wait_for(waiting, 5)
    assert lease.name == "b" and await running(scheduler) == ["b"] and launcher.launched[0].stopped


async def test_a_full_queue_answers_503_at_once() -> None:
    scheduler, _, _ = make(plan("a"), plan("b"), max_queue=1)
    busy = await scheduler.acquire("a")
    first = asyncio.create_task(scheduler.acquire("b"))
    await settle()
    with pytest.raises(ServerBusy, match="maximum pending requests exceeded"):
        await scheduler.acquire("b")
    scheduler.release(busy)
    await asyncio.wait_for(first, 5)


async def test_a_crash_is_noticed_the_next_request_restarts_it_and_repeated_crashes_back_off() -> None:
    scheduler, launcher, clock = make(plan("a"))
    lease = await scheduler.acquire("a")
    await launcher.launched[0].crash()
    await settle()
    assert await running(scheduler) == []  # noticed without a request
    scheduler.release(lease)  # the stream that died with it ends later: harmless
    second = await scheduler.acquire("a")  # restarted at once after one crash
    assert second.url == launcher.launched[1].url and second.generation == lease.generation + 1
    await launcher.launched[1].crash()
    await settle()
    with pytest.raises(ServerBusy) as info:  # crashed again right after the restart
        await scheduler.acquire("a")
    assert "exited with code -9" in info.value.message
    await clock.advance(info.value.retry_after)
    assert (await scheduler.acquire("a")).url == launcher.launched[2].url


async def test_unload_waits_for_requests_in_flight() -> None:
    scheduler, launcher, _ = make(plan("a"))
    lease = await scheduler.acquire("a")
    await scheduler.unload("a")
    assert await running(scheduler) == ["a"]
    scheduler.release(lease)
    await settle()
    assert await running(scheduler) == [] and launcher.launched[0].stopped


async def test_close_stops_every_child_and_a_start_in_progress() -> None:
    launcher = FakeLauncher(auto_ready=False)
    scheduler, _, _ = make(plan("a", device="0"), plan("b", device="1"), launcher=launcher)
    launcher.auto_ready = True
    await scheduler.acquire("a")
    launcher.auto_ready = False
    starting = asyncio.create_task(scheduler.acquire("b"))
    await settle()
    await scheduler.close()
    assert all(c.stopped for c in launcher.launched) and len(launcher.launched) == 2
    with pytest.raises(ServerBusy):
        await starting


async def test_preload_starts_only_preload_models() -> None:
    scheduler, launcher, _ = make(plan("a", preload=True, device="0"), plan("b", device="1"))
    await scheduler.preload()
    assert await running(scheduler) == ["a"] and len(launcher.launched) == 1
