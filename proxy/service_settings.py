"""The service's own configuration keys (``drain_timeout``), parsed apart from
proxy/config.py: a function of the raw top-level mapping returning a frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.confcheck import positive

KEYS = frozenset({"drain_timeout"})


@dataclass(frozen=True)
class ServiceSettings:
    drain_timeout: float = 30.0  # seconds in-flight requests get to finish after SIGTERM


def parse(data: dict[str, Any]) -> ServiceSettings:
    if "drain_timeout" in data:
        return ServiceSettings(drain_timeout=positive(data["drain_timeout"], "drain_timeout"))
    return ServiceSettings()
