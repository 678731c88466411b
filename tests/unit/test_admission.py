"""The async side of fair turns (proxy/admission.py) on fake timers: the hot path needs
no await, a wait ends at its deadline, and a request cancelled just as its turn came
passes the turn on instead of keeping it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proxy import admission_remote
from proxy.admission import Admission
from proxy.errors import ProxyError, ServerBusy
from proxy.identity import Caller
from proxy.turns import Limits
from tests.fakes.timers import FakeTimers

ONE = Limits(max_concurrency=1, queue_timeout=10.0)
A, B, C = Caller("a"), Caller("b"), Caller("c")


async def test_enter_is_a_plain_call_and_release_hands_the_turn_on() -> None:
    admission = Admission(FakeTimers().timers())
    ticket = admission.enter("r0", ONE, A)
    assert ticket is not None and admission.enter("r0", ONE, B) is None
    waiting = asyncio.create_task(admission.wait("r0", ONE, B))
    await asyncio.sleep(0)
    admission.release(ticket)
    admission.release(ticket)  # twice: no second turn freed
    assert (await waiting).user == "b"
    assert admission.snapshot()["r0"].in_flight == 1
    admission.close()


async def test_a_wait_ends_with_server_busy_at_its_deadline() -> None:
    timers = FakeTimers()
    admission = Admission(timers.timers())
    assert admission.enter("r0", ONE, A) is not None
    waiting = asyncio.create_task(admission.wait("r0", ONE, B))
    await asyncio.sleep(0)
    await timers.advance(9.9)
    assert not waiting.done()
    await timers.advance(0.1)
    with pytest.raises(ServerBusy, match="server busy, please try again."):
        await waiting
    assert admission.snapshot()["r0"].queued == 0
    admission.close()


async def test_cancelled_as_its_turn_came_the_turn_goes_to_the_next() -> None:
    admission = Admission(FakeTimers().timers())
    ticket = admission.enter("r0", ONE, A)
    assert ticket is not None
    b = asyncio.create_task(admission.wait("r0", ONE, B))
    c = asyncio.create_task(admission.wait("r0", ONE, C))
    await asyncio.sleep(0)
    admission.release(ticket)  # b is given the turn...
    b.cancel()  # ...and its client leaves before b resumes
    with pytest.raises(asyncio.CancelledError):
        await b
    assert (await asyncio.wait_for(c, 1)).user == "c"
    assert admission.snapshot()["r0"].in_flight == 1
    admission.close()


async def test_new_limits_apply_to_those_waiting() -> None:
    admission = Admission(FakeTimers().timers())
    assert admission.enter("r0", ONE, A) is not None
    waiting = asyncio.create_task(admission.wait("r0", ONE, B))
    await asyncio.sleep(0)
    assert admission.enter("r0", Limits(max_concurrency=3, queue_timeout=10.0), C) is not None
    assert (await asyncio.wait_for(waiting, 1)).user == "b"
    assert admission.snapshot()["r0"].in_flight == 3
    admission.close()


async def test_the_supervisors_state_answers_for_every_worker() -> None:
    """--workers N: two clients of one owner share the limit; a closed connection is a
    turn given back; figures come from the owner."""
    owner = admission_remote.Owner()
    owner.start()
    try:
        one, two = admission_remote.Client(owner.path), admission_remote.Client(owner.path)
        assert one.enter("r0", ONE, A) is None  # always asks the owner
        held = await one.wait("r0", ONE, A)
        waiting = asyncio.create_task(two.wait("r0", ONE, B))
        for _ in range(100):
            figures = await two.figures()
            if "r0" in figures and figures["r0"].queued == 1:
                break
            await asyncio.sleep(0.01)
        assert not waiting.done()
        one.release(held)
        theirs = await asyncio.wait_for(waiting, 5)
        assert theirs.user == "b"
        figures = await one.figures()
        assert (figures["r0"].in_flight, figures["r0"].waits) == (1, 1)
        assert one.snapshot() == {}
        two.release(theirs)
    finally:
        owner.stop()


async def test_a_busy_owner_answers_with_ollamas_busy_error() -> None:
    owner = admission_remote.Owner()
    owner.start()
    try:
        client = admission_remote.Client(owner.path)
        full = Limits(max_concurrency=1, max_queue=1)
        held = await client.wait("r0", full, A)
        queued = asyncio.create_task(client.wait("r0", full, B))
        for _ in range(100):
            if (await client.figures())["r0"].queued == 1:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(ServerBusy, match="maximum pending requests exceeded"):
            await client.wait("r0", full, C)
        queued.cancel()  # the worker's client left: the owner drops the wait
        for _ in range(100):
            if (await client.figures())["r0"].queued == 0:
                break
            await asyncio.sleep(0.01)
        assert (await client.figures())["r0"].queued == 0
        client.release(held)
    finally:
        owner.stop()


async def test_an_owner_that_is_gone_is_a_clear_error(tmp_path: Path) -> None:
    client = admission_remote.Client(str(tmp_path / "none.sock"))
    with pytest.raises(ProxyError, match="the process that keeps the fair turns is not answering"):
        await client.wait("r0", ONE, A)
