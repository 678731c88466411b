"""Choosing the backend for a request among a model's replicas (no I/O).

Resolving a name (``Registry.resolve``: Ollama name → facts and the replicas that serve
it) is separate from choosing one of those replicas here. A ``Strategy`` picks among
healthy candidates; the ``Router`` filters by health and handles the failover choice
(another healthy replica, never the one that failed).

- ``LeastLoaded``: the lowest ``Load.score`` (requests in flight and vLLM's queue, then
  KV-cache use); between equal loads, the lower latency of two picked at random (the
  seeded RNG is injected).
- ``Affinity``: a conversation stays on the replica it started on, so vLLM's prefix cache
  is reused; it gives way when that replica is out, saturated while another is less
  loaded, or no longer serves the model.
- ``First``: the first configured replica that is healthy (plain failover).
"""

from __future__ import annotations

import hashlib
import random
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

import orjson

from proxy.backend import Backend

_AFFINITY_KEYS = 65536  # conversations remembered; the oldest are forgotten first


class Strategy(Protocol):
    def choose(self, candidates: Sequence[Backend], key: str | None) -> Backend: ...


class LeastLoaded:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(self, candidates: Sequence[Backend], key: str | None) -> Backend:
        best = min(b.load.score() for b in candidates)
        tied = [b for b in candidates if b.load.score() == best]
        if len(tied) == 1:
            return tied[0]
        one, two = self._rng.sample(tied, 2)
        if one.latency_ms is not None and two.latency_ms is not None and two.latency_ms < one.latency_ms:
            return two
        return one


class First:
    def choose(self, candidates: Sequence[Backend], key: str | None) -> Backend:
        return candidates[0]


class Affinity:
    def __init__(self, inner: Strategy, capacity: int = _AFFINITY_KEYS) -> None:
        self._inner = inner
        self._capacity = capacity
        self._sticky: OrderedDict[str, str] = OrderedDict()  # key → backend name

    def choose(self, candidates: Sequence[Backend], key: str | None) -> Backend:
        if key is None:
            return self._inner.choose(candidates, key)
        name = self._sticky.get(key)
        held = next((b for b in candidates if b.name == name), None)
        if held is not None and not self._gives_way(held, candidates):
            self._sticky.move_to_end(key)
            return held
        chosen = self._inner.choose(candidates, key)
        self._sticky[key] = chosen.name
        self._sticky.move_to_end(key)
        while len(self._sticky) > self._capacity:
            self._sticky.popitem(last=False)
        return chosen

    def inherit(self, old: Affinity) -> None:
        """After a reload: the conversations ``old`` placed stay where they are. One held by
        a backend that is gone chooses again on its next turn (``choose`` finds no holder)."""
        self._sticky = OrderedDict(old._sticky)
        while len(self._sticky) > self._capacity:
            self._sticky.popitem(last=False)

    @staticmethod
    def _gives_way(held: Backend, candidates: Sequence[Backend]) -> bool:
        return held.load.saturated() and any(b.load.score() < held.load.score() for b in candidates if b is not held)


class Router:
    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    def inherit(self, old: Router) -> None:
        """A reload's new router keeps the old one's conversation memory (when both keep
        conversations on their replica), so a SIGHUP moves no conversation."""
        if isinstance(self.strategy, Affinity) and isinstance(old.strategy, Affinity):
            self.strategy.inherit(old.strategy)

    def pick(self, candidates: Sequence[Backend], key: str | None = None, exclude: Collection[Backend] = ()) -> Backend | None:
        """The backend for a request. With ``exclude`` (a failover) only a healthy one
        that is not excluded, else None. Without, when every candidate is out, the one
        whose probe is due first: its error reaches the client rather than a guess."""
        rest = [b for b in candidates if b not in exclude]
        healthy = [b for b in rest if b.health.up]
        if healthy:
            return self.strategy.choose(healthy, key) if len(healthy) > 1 else healthy[0]
        if exclude or not rest:
            return None
        return min(rest, key=lambda b: b.health.retry_at)


def router(strategy: str, affinity: bool, seed: int | None = None) -> Router:
    chosen: Strategy = LeastLoaded(random.Random(seed)) if strategy == "least_loaded" else First()
    return Router(Affinity(chosen) if affinity else chosen)


def session_key(headers: Mapping[str, str], body: Mapping[str, Any]) -> str | None:
    """What identifies a conversation: Open WebUI's chat id, else the user (Open WebUI's
    user header or OpenAI's ``user`` field) with a hash of the messages up to the first user
    turn (the system prompt and the opening question stay the same all conversation)."""
    chat = headers.get("X-OpenWebUI-Chat-Id")
    if chat:
        return f"chat:{chat}"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    opening = []
    for message in messages:
        opening.append(message)
        if isinstance(message, dict) and message.get("role") == "user":
            break
    user = headers.get("X-OpenWebUI-User-Id") or body.get("user") or ""
    digest = hashlib.blake2b(orjson.dumps(opening, option=orjson.OPT_SORT_KEYS), digest_size=12).hexdigest()
    return f"user:{user}:{digest}"
