"""The ``routing:`` section of config.yaml (replicas, health and failover) and the
``backend:`` of a model entry, which may name several replicas."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from proxy.confcheck import ConfigError, boolean, choice, listing, positive, require_mapping, text

STRATEGIES = ("least_loaded", "first")


@dataclass(frozen=True)
class RoutingSettings:
    strategy: str = "least_loaded"  # least_loaded | first (the first healthy replica in order)
    affinity: bool = True  # keep a conversation on one replica (vLLM's prefix cache)
    cooldown: float = 2.0  # seconds a failing backend gets no requests before it is probed
    probe_interval: float = 2.0  # seconds between GET /health probes while it fails
    metrics_interval: float = 1.5  # seconds between /metrics scrapes of replicated backends


def parse(data: Any) -> RoutingSettings:
    require_mapping(data, "routing", {"strategy", "affinity", "cooldown", "probe_interval", "metrics_interval"})
    kw: dict[str, Any] = {}
    if "strategy" in data:
        kw["strategy"] = choice(data["strategy"], "routing.strategy", STRATEGIES)
    if "affinity" in data:
        kw["affinity"] = boolean(data["affinity"], "routing.affinity")
    for key in ("cooldown", "probe_interval", "metrics_interval"):
        if key in data:
            kw[key] = positive(data[key], f"routing.{key}")
    return RoutingSettings(**kw)


def backend_names(value: Any, where: str) -> tuple[str, ...]:
    """A model entry's ``backend``: one backend's name or URL, or a list of them
    (replicas, tried in that order by the ``first`` strategy)."""
    items = listing(value, where) if isinstance(value, list) else [value]
    if not items:
        raise ConfigError(f"{where}: expected a backend name or a non-empty list of them")
    out = tuple(text(v, where).rstrip("/") for v in items)
    if len(set(out)) != len(out):
        raise ConfigError(f"{where}: a backend is listed twice")
    return out


class _Named(Protocol):
    @property
    def url(self) -> str: ...

    @property
    def name(self) -> str: ...


B = TypeVar("B", bound=_Named)


def unique_backends(backends: list[B], where: str) -> tuple[B, ...]:
    """The backends once each: the same URL twice (file and --backend) is one backend;
    two URLs under one name are an error (names key replicas, logs and admission)."""
    seen: dict[str, B] = {}
    for b in backends:
        if b.url in (s.url for s in seen.values()):
            continue
        if b.name in seen:
            raise ConfigError(f"{where}: two backends are named {b.name!r}")
        seen[b.name] = b
    return tuple(seen.values())
