"""The async side of fair turns (proxy/admission.py) on fake timers: the hot path needs
no await, a wait ends at its deadline, and a request cancelled just as its turn came
passes the turn on instead of keeping it."""

from __future__ import annotations

import asyncio

import pytest

from proxy.admission import Admission
from proxy.errors import ServerBusy
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
