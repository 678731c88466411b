"""Fair turns (proxy/turns.py) as table rows: each row is a script of calls on one
backend's ``Turns`` and what each call must answer. Times are passed in; no clock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from proxy.errors import ServerBusy
from proxy.turns import Limits, Turns, Waiter

# A step: ("enter", user, expected bool) | ("wait", label, user[, weight]) | ("busy", user)
# | ("release", user, now, [labels admitted]) | ("resize", Limits, [labels admitted])
# | ("expire", now, [labels expired]) | ("leave", label) | ("snapshot", field, value)


@dataclass(frozen=True)
class Row:
    name: str
    limits: Limits
    steps: list[tuple[Any, ...]]


ROWS = [
    Row("under the limit requests go straight through", Limits(max_concurrency=2),
        [("enter", "a", True), ("enter", "b", True), ("snapshot", "in_flight", 2)]),
    Row("at the limit a request waits", Limits(max_concurrency=1),
        [("enter", "a", True), ("enter", "b", False)]),
    Row("a flood and one chat: the chat goes next", Limits(max_concurrency=1),
        [("enter", "a", True), ("wait", "a1", "a"), ("wait", "a2", "a"), ("wait", "a3", "a"), ("wait", "b1", "b"),
         ("release", "a", 1.0, ["b1"]), ("release", "b", 2.0, ["a1"]), ("release", "a", 3.0, ["a2"])]),
    Row("two users with queues alternate", Limits(max_concurrency=1),
        [("enter", "z", True), ("wait", "a1", "a"), ("wait", "a2", "a"), ("wait", "a3", "a"), ("wait", "b1", "b"),
         ("wait", "b2", "b"), ("release", "z", 1.0, ["a1"]), ("release", "a", 1.0, ["b1"]),
         ("release", "b", 1.0, ["a2"]), ("release", "a", 1.0, ["b2"]), ("release", "b", 1.0, ["a3"])]),
    Row("weight 2 gets two turns for one", Limits(max_concurrency=1),
        [("enter", "z", True), *[("wait", f"a{i}", "a", 1.0) for i in range(3)],
         *[("wait", f"b{i}", "b", 2.0) for i in range(4)], ("release", "z", 0.0, ["a0"]),
         ("release", "a", 0.0, ["b0"]), ("release", "b", 0.0, ["b1"]), ("release", "b", 0.0, ["a1"]),
         ("release", "a", 0.0, ["b2"]), ("release", "b", 0.0, ["b3"]), ("release", "b", 0.0, ["a2"])]),
    Row("a user at max_user_concurrency waits while another goes through",
        Limits(max_concurrency=4, max_user_concurrency=2),
        [("enter", "a", True), ("enter", "a", True), ("enter", "a", False), ("enter", "b", True)]),
    Row("a capped user's queue does not hold others back", Limits(max_concurrency=2, max_user_concurrency=1),
        [("enter", "a", True), ("wait", "a1", "a"), ("enter", "b", True), ("release", "b", 1.0, []),
         ("enter", "c", True), ("release", "a", 2.0, ["a1"]), ("snapshot", "in_flight", 2)]),
    Row("past max_queue a request is turned away", Limits(max_concurrency=1, max_queue=2),
        [("enter", "a", True), ("wait", "w1", "b"), ("wait", "w2", "c"), ("busy", "d"),
         ("snapshot", "rejected_full", 1), ("snapshot", "queued", 2)]),
    Row("a wait ends at queue_timeout", Limits(max_concurrency=1, queue_timeout=5.0),
        [("enter", "a", True), ("wait", "w", "b"), ("expire", 4.9, []), ("expire", 5.0, ["w"]),
         ("snapshot", "rejected_timeout", 1), ("snapshot", "queued", 0), ("release", "a", 6.0, [])]),
    Row("a request that leaves the queue is not given a turn", Limits(max_concurrency=1),
        [("enter", "a", True), ("wait", "w", "b"), ("leave", "w"), ("snapshot", "queued", 0),
         ("release", "a", 1.0, []), ("snapshot", "in_flight", 0)]),
    Row("raising the limit lets waiters run", Limits(max_concurrency=1),
        [("enter", "a", True), ("wait", "b1", "b"), ("wait", "c1", "c"), ("resize", Limits(max_concurrency=3), ["b1", "c1"]),
         ("snapshot", "in_flight", 3)]),
    Row("waits are counted and summed", Limits(max_concurrency=1),
        [("enter", "a", True), ("wait", "w", "b"), ("release", "a", 2.5, ["w"]), ("snapshot", "waits", 1),
         ("snapshot", "wait_seconds", 2.5), ("snapshot", "users_waiting", 0)]),
    Row("releasing a user that runs nothing changes nothing", Limits(max_concurrency=1),
        [("enter", "a", True), ("release", "ghost", 0.0, []), ("snapshot", "in_flight", 1)]),
]  # fmt: skip


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_turns(row: Row) -> None:
    turns = Turns(row.limits)
    waiters: dict[str, Waiter] = {}
    for step in row.steps:
        op = step[0]
        if op == "enter":
            assert turns.enter(step[1]) is step[2], step
        elif op == "wait":
            weight = step[3] if len(step) > 3 else 1.0
            waiters[step[1]] = turns.wait(step[2], weight, now=0.0, handle=step[1])
        elif op == "busy":
            with pytest.raises(ServerBusy):
                turns.wait(step[1], 1.0, now=0.0)
        elif op == "release":
            assert [w.handle for w in turns.release(step[1], step[2])] == step[3], step
        elif op == "resize":
            assert [w.handle for w in turns.resize(step[1], 0.0)] == step[2], step
        elif op == "expire":
            assert [w.handle for w in turns.expired(step[1])] == step[2], step
        elif op == "leave":
            turns.leave(waiters[step[1]])
        else:
            assert getattr(turns.snapshot(), step[1]) == step[2], step


def test_idle_users_are_forgotten() -> None:
    turns = Turns(Limits(max_concurrency=1))
    turns.enter("a")
    waiter = turns.wait("b", 1.0, now=0.0)
    assert turns.release("a", 1.0) == [waiter]
    turns.release("b", 2.0)
    assert turns.snapshot().in_flight == 0
    assert turns.next_deadline() is None
    assert not turns._users  # bounded memory: nobody's state is kept once idle


def test_next_deadline_is_the_earliest_wait() -> None:
    turns = Turns(Limits(max_concurrency=1, queue_timeout=10.0))
    turns.enter("a")
    turns.wait("b", 1.0, now=3.0)
    turns.wait("c", 1.0, now=5.0)
    assert turns.next_deadline() == 13.0


def test_leaving_twice_or_after_a_turn_is_harmless() -> None:
    turns = Turns(Limits(max_concurrency=1))
    turns.enter("a")
    waiter = turns.wait("b", 1.0, now=0.0)
    turns.release("a", 0.0)
    turns.leave(waiter)  # it was admitted: still running
    assert turns.snapshot().in_flight == 1
    other = turns.wait("c", 1.0, now=0.0)
    turns.leave(other)
    turns.leave(other)
    assert turns.snapshot().queued == 0
