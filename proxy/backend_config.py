"""A backend's settings: one vLLM server under ``backends:`` and the ``timeouts:`` section.

Parsed apart from proxy/config.py so the backend keys have one home; ``proxy.config``
re-exports ``BackendConfig`` and ``Timeouts`` for its callers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from proxy import fairconf, toolconf
from proxy.confcheck import ConfigError
from proxy.confcheck import boolean as _bool
from proxy.confcheck import choice as _choice
from proxy.confcheck import optional_text as _optional_str
from proxy.confcheck import positive as _positive
from proxy.confcheck import require_mapping as _require_mapping
from proxy.confcheck import text as _str
from proxy.redact import display_url, host_port, url_secrets


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0  # seconds to open a TCP connection to a backend
    first_byte: float = 600.0  # seconds until the backend answers with headers
    discovery: float = 5.0  # seconds for one GET /v1/models during discovery
    idle: float = 120.0  # seconds of silence between body bytes once a backend answered


@dataclass(frozen=True, repr=False)
class BackendConfig:
    url: str  # base URL of a vLLM server, without /v1; may hold user:password@ (never shown)
    name: str  # label used in logs, errors and model entries
    api_key: str | None = None  # sent as "Authorization: Bearer ..." to the backend
    discover: bool = True  # list the backend's /v1/models as Ollama models
    sleep_mode: bool = False  # vLLM runs with --enable-sleep-mode and VLLM_SERVER_DEV_MODE=1
    sleep_level: int = 1  # 1: weights to CPU RAM (fast wake); 2: weights discarded
    tools: toolconf.ToolSettings = toolconf.ToolSettings()  # drop_unsupported_tools (proxy/toolconf.py)
    ca_file: str = ""  # https:// backends: CA certificate(s) to verify it by; "" = the system's store
    scheduling_policy: str = "fcfs"  # as its vLLM's --scheduling-policy; "priority": send keys' priority
    turns: fairconf.BackendTurns = fairconf.BackendTurns()  # max_concurrency etc. (proxy/fairconf.py)

    @property
    def public_url(self) -> str:
        """The URL as errors, logs, listings and metrics show it: password replaced by ***."""
        return display_url(self.url)

    @property
    def secrets(self) -> tuple[str, ...]:
        """What must never appear in any text: the URL's password and the api_key."""
        return url_secrets(self.url) + ((self.api_key,) if self.api_key else ())

    def __repr__(self) -> str:  # a traceback or debug print must not show the secrets either
        return f"BackendConfig(name={self.name!r}, url={self.public_url!r}, api_key={'***' if self.api_key else None})"


def timeouts(data: Any) -> Timeouts:
    _require_mapping(data, "timeouts", {"connect", "first_byte", "discovery", "idle"})
    return Timeouts(**{k: _positive(v, f"timeouts.{k}") for k, v in data.items()})


def backend(data: Any, where: str) -> BackendConfig:
    if isinstance(data, str):
        data = {"url": data}
    _require_mapping(
        data,
        where,
        {
            "url",
            "name",
            "api_key",
            "api_key_env",
            "discover",
            "sleep_mode",
            "sleep_level",
            "ca_file",
            "scheduling_policy",
            *toolconf.KEYS,
            *fairconf.BACKEND_KEYS,
        },
    )
    if "url" not in data:
        raise ConfigError(f"{where}.url: missing")
    url = _str(data["url"], f"{where}.url").rstrip("/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(f"{where}.url: {display_url(url)!r} has an invalid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}.url: {display_url(url)!r} is not an http(s) URL")
    if url.endswith("/v1"):
        url = url[:-3]
    api_key = _str(data["api_key"], f"{where}.api_key") if data.get("api_key") else None
    if data.get("api_key_env"):
        env = _str(data["api_key_env"], f"{where}.api_key_env")
        api_key = os.environ.get(env)
        if not api_key:
            raise ConfigError(f"{where}.api_key_env: environment variable {env} is not set")
    return BackendConfig(
        url=url,
        name=_str(data.get("name", host_port(url)), f"{where}.name"),  # never the userinfo
        api_key=api_key,
        discover=_bool(data.get("discover", True), f"{where}.discover"),
        sleep_mode=_bool(data.get("sleep_mode", False), f"{where}.sleep_mode"),
        sleep_level=_choice(data.get("sleep_level", 1), f"{where}.sleep_level", (1, 2)),
        tools=toolconf.parse(data, where),
        ca_file=_optional_str(data, "ca_file", where),
        scheduling_policy=_choice(data.get("scheduling_policy", "fcfs"), f"{where}.scheduling_policy", ("fcfs", "priority")),
        turns=fairconf.backend(data, where),
    )
