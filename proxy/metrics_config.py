"""The ``metrics_listen`` key: where ``GET /metrics`` is served when not on the main port."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.confcheck import ConfigError, text


@dataclass(frozen=True)
class MetricsSettings:
    listen: str = ""  # HOST:PORT; "" = /metrics on the main port


KEYS = frozenset({"metrics_listen"})


def parse(data: dict[str, Any]) -> MetricsSettings:
    if "metrics_listen" not in data:
        return MetricsSettings()
    value = text(data["metrics_listen"], "metrics_listen").strip()
    host, sep, port = value.rpartition(":")
    if value.startswith("[") and not host.endswith("]"):
        sep = ""  # an IPv6 address without a port
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"metrics_listen: expected HOST:PORT (e.g. 127.0.0.1:9464), got {value!r}")
    return MetricsSettings(listen=value)
