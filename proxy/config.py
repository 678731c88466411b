"""Configuration: every default and every validation rule lives here.

``load(path)`` reads the YAML file; ``from_mapping`` validates a mapping and is what tests
call. Any problem raises ``ConfigError`` whose text names the file and the key, so
start-up can stop with one clear line and no traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import yaml

from proxy import names
from proxy.errors import BadRequest
from proxy.translate.common import keep_alive_seconds
from proxy.translate.fim import TEMPLATES as FIM_TEMPLATES

DEFAULT_LISTEN = "127.0.0.1:11434"
# Reported by GET /api/version. Clients gate features on it (VS Code needs >= 0.6.4,
# `think` appeared around 0.9), so it must be a recent, numeric dotted Ollama version.
DEFAULT_OLLAMA_VERSION = "0.13.0"
CAPABILITIES = ("completion", "tools", "insert", "vision", "embedding", "thinking")


class ConfigError(ValueError):
    """A configuration problem, already phrased for the operator."""


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0  # seconds to open a TCP connection to a backend
    first_byte: float = 600.0  # seconds until the backend answers with headers
    discovery: float = 5.0  # seconds for one GET /v1/models during discovery


@dataclass(frozen=True)
class BackendConfig:
    url: str  # base URL of a vLLM server, without /v1
    name: str  # label used in logs, errors and model entries
    api_key: str | None = None  # sent as "Authorization: Bearer ..." to the backend
    discover: bool = True  # list the backend's /v1/models as Ollama models
    sleep_mode: bool = False  # vLLM runs with --enable-sleep-mode and VLLM_SERVER_DEV_MODE=1
    sleep_level: int = 1  # 1: weights to CPU RAM (fast wake); 2: weights discarded


@dataclass(frozen=True)
class ModelEntry:
    name: str  # Ollama name clients use, e.g. "llama3.1:8b"
    backend: str  # name or URL of the backend that serves it
    served: str  # vLLM served-model name sent upstream
    family: str | None = None
    parameter_size: str = ""
    quantization_level: str = ""
    size: int = 0  # bytes, reported by /api/tags and /api/ps
    capabilities: tuple[str, ...] | None = None  # None: detect
    options: dict[str, Any] = field(default_factory=dict)  # defaults under request options
    fim: str | None = None  # fill-in-the-middle prompt family for generate `suffix`


@dataclass(frozen=True)
class Config:
    listen: str = DEFAULT_LISTEN
    ollama_version: str = DEFAULT_OLLAMA_VERSION
    log_level: str = "info"
    log_format: str = "auto"  # auto: console on a terminal, JSON otherwise
    refresh_interval: float = 10.0  # seconds between model discoveries
    workers: int = 0  # processes sharing the port (SO_REUSEPORT); 0 = one per CPU core
    max_inflight: int = 512  # per worker: generation requests in flight before 503 (Ollama's queue size)
    event_loop: str = "auto"  # auto (uvloop if installed) | uvloop | asyncio
    origins: tuple[str, ...] = ()  # extra CORS origins beyond Ollama's local defaults ("*" wildcards)
    keep_alive: float = 300.0  # seconds a sleep-mode backend stays awake after its last request
    timeouts: Timeouts = Timeouts()
    backends: tuple[BackendConfig, ...] = ()
    models: tuple[ModelEntry, ...] = ()
    source: str = "<defaults>"

    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    def with_cli(self, backends: list[str], listen: str | None, env: dict[str, str], workers: int | None = None) -> Config:
        """Apply command-line flags: ``--listen`` > ``OLLAMA_HOST`` > file > default."""
        extra = []
        for url in backends:
            try:
                extra.append(_backend({"url": url}, "backend"))
            except ConfigError as exc:
                raise ConfigError(f"--backend: {str(exc).split(': ', 1)[1]}") from None
        if listen is not None:
            chosen = parse_listen(listen, "--listen")
        elif env.get("OLLAMA_HOST"):
            chosen = parse_listen(env["OLLAMA_HOST"], "OLLAMA_HOST")
        else:
            chosen = self.listen
        merged = _unique_backends([*self.backends, *extra], "--backend")
        origins = self.origins + tuple(o.strip() for o in env.get("OLLAMA_ORIGINS", "").split(",") if o.strip())
        if workers is not None and workers < 1:
            raise ConfigError(f"--workers: expected a whole number >= 1, got {workers}")
        return replace(self, listen=chosen, backends=merged, workers=workers or self.workers, origins=origins)


def load(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} invalid YAML: {getattr(exc, 'problem', exc)}") from None
    return from_mapping(data or {}, path)


def from_mapping(data: Any, source: str = "<config>") -> Config:
    try:
        return _config(data, source)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def parse_listen(value: str, key: str) -> str:
    """``HOST:PORT`` with Ollama's defaults: ``0.0.0.0`` → port 11434, ``:8080`` → 127.0.0.1."""
    text = value.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    text = text.rstrip("/")
    host, port = text, "11434"
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[: end + 1], text[end + 1 :]
        port = rest[1:] if rest.startswith(":") else port
    elif text.count(":") == 1:
        host, port = text.split(":")
    host = host or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: invalid port in {value!r}")
    return f"{host}:{port}"


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


_TOP = {"listen", "ollama_version", "log_level", "log_format", "refresh_interval", "workers",
        "max_inflight", "keep_alive", "origins", "event_loop", "timeouts", "backends", "models"}  # fmt: skip


def _config(data: Any, source: str) -> Config:
    _require_mapping(data, "top level", _TOP)
    kw: dict[str, Any] = {"source": source}
    if "listen" in data:
        kw["listen"] = parse_listen(_str(data["listen"], "listen"), "listen")
    if "ollama_version" in data:
        version = _str(data["ollama_version"], "ollama_version")
        if not all(p.isdigit() for p in version.split("-")[0].split(".")):
            raise ConfigError(f"ollama_version: {version!r} is not a numeric dotted version")
        kw["ollama_version"] = version
    if "log_level" in data:
        kw["log_level"] = _choice(data["log_level"], "log_level", ("debug", "info", "warning", "error"))
    if "log_format" in data:
        kw["log_format"] = _choice(data["log_format"], "log_format", ("auto", "json", "console"))
    if "refresh_interval" in data:
        kw["refresh_interval"] = _positive(data["refresh_interval"], "refresh_interval")
    if "workers" in data:
        kw["workers"] = _count(data["workers"], "workers", minimum=0)
    if "max_inflight" in data:
        kw["max_inflight"] = _count(data["max_inflight"], "max_inflight", minimum=1)
    if "event_loop" in data:
        kw["event_loop"] = _choice(data["event_loop"], "event_loop", ("auto", "uvloop", "asyncio"))
    if "origins" in data:
        kw["origins"] = tuple(_str(o, "origins") for o in _list(data["origins"], "origins"))
    if "keep_alive" in data:
        try:
            kw["keep_alive"] = keep_alive_seconds(data["keep_alive"])
        except BadRequest as exc:
            raise ConfigError(f"keep_alive: {exc.message}") from None
    if "timeouts" in data:
        kw["timeouts"] = _timeouts(data["timeouts"])
    backends = [_backend(b, f"backends[{i}]") for i, b in enumerate(_list(data.get("backends", []), "backends"))]
    kw["backends"] = _unique_backends(backends, "backends")
    models = [_model(m, f"models[{i}]") for i, m in enumerate(_list(data.get("models", []), "models"))]
    known = {b.name for b in kw["backends"]} | {b.url for b in kw["backends"]}
    for i, entry in enumerate(models):
        if entry.backend not in known:
            raise ConfigError(f"models[{i}].backend: no backend named {entry.backend!r}")
    kw["models"] = tuple(models)
    return Config(**kw)


def _timeouts(data: Any) -> Timeouts:
    _require_mapping(data, "timeouts", {"connect", "first_byte", "discovery"})
    return Timeouts(**{k: _positive(v, f"timeouts.{k}") for k, v in data.items()})


def _backend(data: Any, where: str) -> BackendConfig:
    if isinstance(data, str):
        data = {"url": data}
    _require_mapping(data, where, {"url", "name", "api_key", "api_key_env", "discover", "sleep_mode", "sleep_level"})
    if "url" not in data:
        raise ConfigError(f"{where}.url: missing")
    url = _str(data["url"], f"{where}.url").rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}.url: {url!r} is not an http(s) URL")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(f"{where}.url: {url!r} has an invalid port") from None
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
        name=_str(data.get("name", parts.netloc), f"{where}.name"),
        api_key=api_key,
        discover=_bool(data.get("discover", True), f"{where}.discover"),
        sleep_mode=_bool(data.get("sleep_mode", False), f"{where}.sleep_mode"),
        sleep_level=_choice(data.get("sleep_level", 1), f"{where}.sleep_level", (1, 2)),
    )


_MODEL_KEYS = {"name", "backend", "served", "family", "parameter_size", "quantization_level",
               "size", "capabilities", "options", "fim"}  # fmt: skip


def _model(data: Any, where: str) -> ModelEntry:
    _require_mapping(data, where, _MODEL_KEYS)
    for key in ("name", "backend", "served"):
        if key not in data:
            raise ConfigError(f"{where}.{key}: missing")
    name = _str(data["name"], f"{where}.name")
    if names.parse(name) is None:
        raise ConfigError(f"{where}.name: {name!r} is not a valid Ollama model name")
    caps = None
    if "capabilities" in data:
        listed = _list(data["capabilities"], f"{where}.capabilities")
        caps = tuple(_choice(c, f"{where}.capabilities", CAPABILITIES) for c in listed)
    options = data.get("options", {})
    _require_mapping(options, f"{where}.options", None)
    size = data.get("size", 0)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ConfigError(f"{where}.size: must be a whole number of bytes")
    return ModelEntry(
        name=name,
        backend=_str(data["backend"], f"{where}.backend").rstrip("/"),
        served=_str(data["served"], f"{where}.served"),
        family=_str(data["family"], f"{where}.family") if "family" in data else None,
        parameter_size=_optional_str(data, "parameter_size", where),
        quantization_level=_optional_str(data, "quantization_level", where),
        size=size,
        capabilities=caps,
        options=dict(options),
        fim=_choice(data["fim"], f"{where}.fim", tuple(FIM_TEMPLATES)) if "fim" in data else None,
    )


def _unique_backends(backends: list[BackendConfig], where: str) -> tuple[BackendConfig, ...]:
    seen: dict[str, BackendConfig] = {}
    for b in backends:
        if b.url in (s.url for s in seen.values()):
            continue  # the same server named twice (file and --backend) is one backend
        if b.name in seen:
            raise ConfigError(f"{where}: two backends are named {b.name!r}")
        seen[b.name] = b
    return tuple(seen.values())


def _require_mapping(data: Any, where: str, allowed: set[str] | None) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    for key in data:
        if allowed is not None and key not in allowed:
            prefix = "" if where == "top level" else f"{where}."
            raise ConfigError(f"{prefix}{key}: unknown key")


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
    return value


def _optional_str(data: dict[str, Any], key: str, where: str) -> str:
    return _str(data[key], f"{where}.{key}") if key in data else ""


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def _list(value: Any, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
    return value


def _positive(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{key}: expected a positive number of seconds, got {value!r}")
    return float(value)


def _count(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}: expected a whole number >= {minimum}, got {value!r}")
    return value


def _choice(value: Any, key: str, allowed: tuple[Any, ...]) -> Any:
    if value not in allowed or isinstance(value, bool):
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, allowed))}")
    return value
