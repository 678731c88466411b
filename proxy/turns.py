"""Fair turns for one backend (no I/O, no clock of its own: times are passed in).

Up to ``max_concurrency`` requests run at once. Below that a request goes straight
through, unless its user already has requests waiting (a user's requests keep their
order) or is at ``max_user_concurrency``. Otherwise it waits in its user's FIFO queue.
When a slot frees, the next request comes from the eligible user with the lowest *pass*
(stride scheduling): each turn a user takes adds ``1 / weight`` to its pass, and a user
whose queue was empty joins at the current pass, so a user with 50 queued requests and a
user with one alternate, and a user of weight 2 gets two turns for every one of weight 1.
At most ``max_queue`` requests wait in all; a wait ends at its deadline.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from proxy.errors import ServerBusy


@dataclass(frozen=True)
class Limits:
    max_concurrency: int = 256  # requests running on the backend at once
    max_user_concurrency: int = 0  # per user; 0 = no cap of its own
    max_queue: int = 512  # requests waiting, all users together
    queue_timeout: float = 60.0  # seconds a request may wait


@dataclass(frozen=True)
class Snapshot:
    """What the metrics need: depth now, and the waits so far (a count and a sum)."""

    in_flight: int
    queued: int
    users_waiting: int
    waits: int  # requests that waited and then ran
    wait_seconds: float  # their waits added up
    rejected_full: int  # turned away: the queue was at max_queue
    rejected_timeout: int  # gave up at queue_timeout


class Waiter:
    """A queued request; ``handle`` is the caller's (e.g. the future the waiter awaits)."""

    __slots__ = ("user", "deadline", "since", "seq", "handle", "admitted")

    def __init__(self, user: str, since: float, deadline: float, seq: int, handle: Any) -> None:
        self.user, self.since, self.deadline, self.seq, self.handle = user, since, deadline, seq, handle
        self.admitted = False


class _User:
    __slots__ = ("queue", "running", "weight", "pass_")

    def __init__(self, weight: float) -> None:
        self.queue: deque[Waiter] = deque()
        self.running = 0
        self.weight = weight
        self.pass_ = 0.0


class Turns:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.in_flight = 0
        self.queued = 0
        self._users: dict[str, _User] = {}
        self._vtime = 0.0  # the pass of the last turn given
        self._waits = 0
        self._wait_seconds = 0.0
        self._full = 0
        self._timeouts = 0
        self._seq = 0  # arrival order: between equal passes the earlier request goes first

    def enter(self, user: str, weight: float = 1.0) -> bool:
        """Run now if there is room for ``user``; counted in flight when True."""
        state = self._users.get(user)
        if self.in_flight >= self.limits.max_concurrency or (state is not None and (state.queue or self._capped(state))):
            return False
        if state is None:
            state = self._users[user] = _User(max(weight, 0.001))
            state.pass_ = self._vtime
        self._run(state)
        return True

    def wait(self, user: str, weight: float, now: float, handle: Any = None) -> Waiter:
        """Queue a request that could not ``enter``; ``ServerBusy`` past ``max_queue``."""
        if self.queued >= self.limits.max_queue:
            self._full += 1
            raise ServerBusy()
        state = self._users.get(user)
        if state is None:
            state = self._users[user] = _User(weight)
        if not state.queue:
            state.pass_ = max(state.pass_, self._vtime)
        state.weight = max(weight, 0.001)
        self._seq += 1
        waiter = Waiter(user, now, now + self.limits.queue_timeout, self._seq, handle)
        state.queue.append(waiter)
        self.queued += 1
        return waiter

    def leave(self, waiter: Waiter, timed_out: bool = False) -> None:
        """A waiter that gave up (its deadline passed, or its client left)."""
        if waiter.admitted:
            return
        state = self._users.get(waiter.user)
        if state is None or waiter not in state.queue:
            return
        state.queue.remove(waiter)
        self.queued -= 1
        self._timeouts += timed_out
        self._forget(waiter.user, state)

    def release(self, user: str, now: float) -> list[Waiter]:
        """A running request of ``user`` ended; the waiters that run now (admitted)."""
        state = self._users.get(user)
        if state is not None and state.running > 0:
            state.running -= 1
            self.in_flight -= 1
            self._forget(user, state)
        return self._dispatch(now)

    def resize(self, limits: Limits, now: float) -> list[Waiter]:
        """New limits (e.g. the backend's own batch size became known); who runs now."""
        self.limits = limits
        return self._dispatch(now)

    def next_deadline(self) -> float | None:
        return min((s.queue[0].deadline for s in self._users.values() if s.queue), default=None)

    def expired(self, now: float) -> list[Waiter]:
        """Remove and return the waiters whose deadline passed."""
        gone = [w for s in self._users.values() for w in s.queue if w.deadline <= now]
        for waiter in gone:
            self.leave(waiter, timed_out=True)
        return gone

    def snapshot(self) -> Snapshot:
        waiting = sum(1 for s in self._users.values() if s.queue)
        return Snapshot(self.in_flight, self.queued, waiting, self._waits, self._wait_seconds, self._full, self._timeouts)

    def _dispatch(self, now: float) -> list[Waiter]:
        admitted = []
        while self.in_flight < self.limits.max_concurrency:
            ready = [(s.pass_, s.queue[0].seq, name) for name, s in self._users.items() if s.queue and not self._capped(s)]
            if not ready:
                break
            _, _, name = min(ready)
            state = self._users[name]
            waiter = state.queue.popleft()
            self.queued -= 1
            self._vtime = state.pass_
            self._run(state)
            waiter.admitted = True
            self._waits += 1
            self._wait_seconds += max(0.0, now - waiter.since)
            admitted.append(waiter)
        return admitted

    def _run(self, state: _User) -> None:
        state.running += 1
        state.pass_ += 1.0 / state.weight
        self.in_flight += 1

    def _capped(self, state: _User) -> bool:
        cap = self.limits.max_user_concurrency
        return bool(cap) and state.running >= cap

    def _forget(self, user: str, state: _User) -> None:
        """Drop an idle user's state (bounded memory); it rejoins at the current pass."""
        if not state.queue and not state.running:
            del self._users[user]
