"""A backend's health and load, as the router sees them (state only; times are passed in).

Health is learnt passively from the requests themselves and actively by probing:

- a connection that cannot be opened (refused, reset, DNS, TLS, or not accepted within
  ``timeouts.connect``) takes the backend out at once; ``SOFT_FAILURES`` consecutive 5xx
  answers, timeouts or responses broken off after their head do too;
- out, it gets no requests while a healthy replica exists, for ``cooldown_s``; then
  ``GET /health`` is probed every ``probe_s`` until one succeeds, which brings it back;
- any request answered in full (or refused with a 4xx) resets the count of consecutive
  failures.

Load is the proxy's own count of requests in flight plus what vLLM's ``/metrics`` last
said (``vllm:num_requests_running``, ``vllm:num_requests_waiting`` and
``vllm:kv_cache_usage_perc``, each summed over the ``engine`` label).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SOFT_FAILURES = 3
SATURATED_KV = 0.95  # KV-cache use from which a backend counts as full


@dataclass
class Health:
    cooldown_s: float = 2.0
    probe_s: float = 2.0
    up: bool = True
    failures: int = 0  # consecutive soft failures
    retry_at: float = 0.0  # while out: monotonic time of the next probe
    error: str = ""  # why it was taken out

    def failed(self, now: float, error: str, hard: bool) -> bool:
        """A request failed; True when this takes the backend out."""
        self.failures += 1
        if not self.up:
            return False
        if hard or self.failures >= SOFT_FAILURES:
            self.up, self.error, self.retry_at = False, error, now + self.cooldown_s
            return True
        return False

    def succeeded(self) -> bool:
        """A request or probe succeeded; True when this brings the backend back."""
        self.failures = 0
        if self.up:
            return False
        self.up, self.error = True, ""
        return True

    def probe_due(self, now: float) -> bool:
        return not self.up and now >= self.retry_at

    def probing(self, now: float) -> None:
        """A probe starts: the next one is due ``probe_s`` from now unless this one succeeds."""
        self.retry_at = now + self.probe_s


@dataclass
class Load:
    inflight: int = 0  # this proxy's requests to the backend that have not ended
    running: float = 0.0  # vLLM's view, from the last /metrics scrape
    waiting: float = 0.0
    kv_cache: float = 0.0  # fraction of the KV cache in use (0..1)

    def requests(self) -> float:
        """Requests the backend is busy with: vLLM's count covers other clients too, ours
        is fresher than the last scrape."""
        return max(float(self.inflight), self.running + self.waiting)

    def score(self) -> tuple[float, float]:
        return self.requests() + self.waiting, self.kv_cache

    def saturated(self) -> bool:
        return self.waiting > 0 or self.kv_cache >= SATURATED_KV


_GAUGES = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_cache",
}


def parse_metrics(text: str) -> dict[str, float]:
    """The three gauges from a Prometheus text exposition, summed over their labels (one
    series per ``engine`` with data parallelism)."""
    out = dict.fromkeys(_GAUGES.values(), 0.0)
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        field = _GAUGES.get(name)
        if field is None:
            continue
        try:
            value = float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        if math.isfinite(value):
            out[field] += value
    return out
