"""Who is asking: the caller a request is accounted to (log line, fair turns, priority).

In order (proxy/auth.py decides): the API key's name; else, with ``trust_user_headers``, the user Open
WebUI forwards; else the client address. The middleware that checks keys and headers
stores the result on the request's context; ``proxy.state.caller_of`` is the one read.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    user: str  # the name the log line, the queues and the metrics use
    source: str = "address"  # "key" | "header" | "jwt" | "address"
    weight: float = 1.0  # share of turns when requests queue (a key's ``weight``)
    priority: int | None = None  # vLLM's request ``priority`` (a key's, with scheduling_policy: priority)
