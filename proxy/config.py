"""Configuration: every default and every validation rule lives here.

``load(path)`` reads the YAML file; ``from_mapping`` validates a mapping and is what tests
call. Any problem raises ``ConfigError`` whose text names the file and the key, so
start-up can stop with one clear line and no traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

from proxy import (
    auth_config,
    backend_config,
    catalog,
    fairconf,
    metrics_config,
    names,
    routing_config,
    service_settings,
    toolconf,
)
from proxy.backend_config import BackendConfig as BackendConfig
from proxy.backend_config import Timeouts as Timeouts
from proxy.confcheck import ConfigError as ConfigError
from proxy.confcheck import choice as _choice
from proxy.confcheck import count as _count
from proxy.confcheck import listing as _list
from proxy.confcheck import optional_text as _optional_str
from proxy.confcheck import positive as _positive
from proxy.confcheck import read_yaml
from proxy.confcheck import require_mapping as _require_mapping
from proxy.confcheck import text as _str
from proxy.errors import BadRequest
from proxy.managed import settings as launch_settings
from proxy.managed.settings import LaunchSettings
from proxy.translate.common import keep_alive_seconds
from proxy.translate.fim import TEMPLATES as FIM_TEMPLATES

DEFAULT_LISTEN = "127.0.0.1:11434"
# Reported by GET /api/version. Clients gate features on it (VS Code needs >= 0.6.4,
# `think` appeared around 0.9), so it must be a recent, numeric dotted Ollama version.
DEFAULT_OLLAMA_VERSION = "0.13.0"
CAPABILITIES = ("completion", "tools", "insert", "vision", "embedding", "thinking")


@dataclass(frozen=True)
class ModelEntry:
    name: str  # Ollama name clients use, e.g. "llama3.1:8b"
    backend: str  # name or URL of the backend that serves it (the first of ``backends``)
    served: str  # vLLM served-model name sent upstream
    family: str | None = None
    parameter_size: str = ""
    quantization_level: str = ""
    size: int = 0  # bytes, reported by /api/tags and /api/ps
    capabilities: tuple[str, ...] | None = None  # None: detect
    options: dict[str, Any] = field(default_factory=dict)  # defaults under request options
    fim: str | None = None  # fill-in-the-middle prompt family for generate `suffix`
    launch: LaunchSettings | None = None  # a managed model: the proxy runs vLLM for it (backend is "")
    system: str = ""  # default system prompt, used when a request brings none (Modelfile SYSTEM)
    tools: toolconf.ToolSettings = toolconf.ToolSettings()  # drop_unsupported_tools; wins over the backend's
    backends: tuple[str, ...] = ()  # every backend that serves it (replicas), ``backend`` first


@dataclass(frozen=True)
class Config:
    listen: str = DEFAULT_LISTEN
    ollama_version: str = DEFAULT_OLLAMA_VERSION
    log_level: str = "info"
    log_format: str = "auto"  # auto: console on a terminal, JSON otherwise
    refresh_interval: float = 10.0  # seconds between model discoveries
    workers: int = 1  # processes sharing the port (SO_REUSEPORT); 0 = one per CPU core
    max_inflight: int = 512  # per worker: generation requests in flight before 503 (Ollama's queue size)
    event_loop: str = "auto"  # auto (uvloop if installed) | uvloop | asyncio
    origins: tuple[str, ...] = ()  # extra CORS origins beyond Ollama's local defaults ("*" wildcards)
    keep_alive: float = 300.0  # seconds a model stays loaded after its last request (managed, sleep mode)
    max_loaded: int = 0  # managed models running at once; 0 = limited by gpu_share only
    max_queue: int = 512  # requests waiting for room to start a managed model, past it 503
    queue_timeout: float = 60.0  # seconds such a request waits before 503 with Retry-After
    max_user_concurrency: int = 0  # requests one user may run on a backend at once; 0 = no cap (fair turns)
    load_timeout: float = 600.0  # seconds vLLM may take to become ready
    vllm_python: str = ""  # the Python that has vLLM; "" = the proxy's own interpreter
    timeouts: Timeouts = Timeouts()
    routing: routing_config.RoutingSettings = routing_config.RoutingSettings()
    backends: tuple[BackendConfig, ...] = ()
    models: tuple[ModelEntry, ...] = ()
    library: catalog.LibrarySettings = catalog.LibrarySettings()  # catalog:, delete_weights
    auth: auth_config.AuthSettings = auth_config.AuthSettings()  # api_keys, trust_user_headers, user_jwt_secret
    metrics: metrics_config.MetricsSettings = metrics_config.MetricsSettings()  # metrics_listen
    source: str = "<defaults>"
    explicit: frozenset[str] = frozenset()  # top-level keys the file set (they win over OLLAMA_* env)
    managed_socket: str = ""  # set by the supervisor with --workers N: the owner of the managed models
    admission_socket: str = ""  # set by the supervisor with --workers N: the owner of the fair turns
    service: service_settings.ServiceSettings = service_settings.ServiceSettings()  # drain_timeout

    @property
    def managed(self) -> tuple[ModelEntry, ...]:
        return tuple(m for m in self.models if m.launch is not None)

    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    def with_cli(
        self,
        backends: list[str],
        listen: str | None,
        env: dict[str, str],
        workers: int | None = None,
        models: list[str] | None = None,
        vllm_python: str | None = None,
        vllm_args: str = "",
    ) -> Config:
        """Apply command-line flags: ``--listen`` > ``OLLAMA_HOST`` > file > default;
        ``OLLAMA_KEEP_ALIVE``/``OLLAMA_MAX_LOADED_MODELS``/``OLLAMA_MAX_QUEUE`` unless the
        file sets the key; ``--model`` adds managed models."""
        extra = []
        for url in backends:
            try:
                extra.append(backend_config.backend({"url": url}, "backend"))
            except ConfigError as exc:
                raise ConfigError(f"--backend: {str(exc).split(': ', 1)[1]}") from None
        if listen is not None:
            chosen = parse_listen(listen, "--listen")
        elif env.get("OLLAMA_HOST"):
            chosen = parse_listen(env["OLLAMA_HOST"], "OLLAMA_HOST")
        else:
            chosen = self.listen
        merged = routing_config.unique_backends([*self.backends, *extra], "--backend")
        origins = self.origins + tuple(o.strip() for o in env.get("OLLAMA_ORIGINS", "").split(",") if o.strip())
        if workers is not None and workers < 1:
            raise ConfigError(f"--workers: expected a whole number >= 1, got {workers}")
        changes = _from_env(env, self.explicit)
        if vllm_python:
            changes["vllm_python"] = vllm_python
        extra_args = launch_settings.arguments(vllm_args, "--vllm-args")
        added = [_cli_model(m, extra_args) for m in models or []]
        taken = {names.key(m.name) for m in self.models}
        for entry in added:
            if names.key(entry.name) in taken:
                raise ConfigError(f"--model: the name {entry.name!r} is used twice")
            taken.add(names.key(entry.name))
        return replace(self, listen=chosen, backends=merged, workers=workers or self.workers, origins=origins,
                       models=(*self.models, *added), **changes)  # fmt: skip

    def secrets(self) -> tuple[str, ...]:
        """Every backend's secrets, the API keys and the JWT secret, for the log scrubber."""
        return tuple(s for b in self.backends for s in b.secrets) + self.auth.secrets


def _from_env(env: dict[str, str], explicit: frozenset[str]) -> dict[str, Any]:
    """Ollama's server variables, for keys the config file does not set."""
    out: dict[str, Any] = {}
    for var, key in (("OLLAMA_KEEP_ALIVE", "keep_alive"), ("OLLAMA_MAX_LOADED_MODELS", "max_loaded"),
                     ("OLLAMA_MAX_QUEUE", "max_queue")):  # fmt: skip
        value = env.get(var, "").strip()
        if not value or key in explicit:
            continue
        if key == "keep_alive":
            try:
                out[key] = keep_alive_seconds(float(value) if _is_number(value) else value)
            except BadRequest as exc:
                raise ConfigError(f"{var}: {exc.message}") from None
        elif value.isdigit():
            out[key] = int(value)
        else:
            raise ConfigError(f"{var}: expected a whole number, got {value!r}")
    if out.get("max_queue") == 0:
        raise ConfigError("OLLAMA_MAX_QUEUE: expected a whole number >= 1, got '0'")
    return out


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _cli_model(value: str, vllm_args: tuple[str, ...]) -> ModelEntry:
    name, launch = launch_settings.from_cli(value, vllm_args)
    display = name or names.from_served(launch.model).display()
    if names.parse(display) is None:
        raise ConfigError(f"--model: {name!r} is not a valid Ollama model name")
    return ModelEntry(name=display, backend="", served=name or launch.model, launch=launch)


def load(path: str) -> Config:
    return from_mapping(read_yaml(path) or {}, path)


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
        "max_inflight", "keep_alive", "origins", "event_loop", "timeouts", "backends", "models",
        "max_loaded", "max_queue", "queue_timeout", "load_timeout", "vllm_python", "catalog", "delete_weights",
        "routing", "max_user_concurrency", *auth_config.KEYS, *metrics_config.KEYS, *service_settings.KEYS}  # fmt: skip


def _config(data: Any, source: str) -> Config:
    _require_mapping(data, "top level", _TOP)
    kw: dict[str, Any] = {"source": source, "explicit": frozenset(data), "service": service_settings.parse(data)}
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
        kw["timeouts"] = backend_config.timeouts(data["timeouts"])
    if "routing" in data:
        kw["routing"] = routing_config.parse(data["routing"])
    if "max_loaded" in data:
        kw["max_loaded"] = _count(data["max_loaded"], "max_loaded", minimum=0)
    if "max_queue" in data:
        kw["max_queue"] = _count(data["max_queue"], "max_queue", minimum=1)
    kw.update({k: _positive(data[k], k) for k in ("queue_timeout", "load_timeout") if k in data})
    kw["max_user_concurrency"] = fairconf.max_user_concurrency(data)
    if "vllm_python" in data:
        kw["vllm_python"] = _str(data["vllm_python"], "vllm_python")
    backends = [backend_config.backend(b, f"backends[{i}]") for i, b in enumerate(_list(data.get("backends", []), "backends"))]
    kw["backends"] = routing_config.unique_backends(backends, "backends")
    models = [_model(m, f"models[{i}]") for i, m in enumerate(_list(data.get("models", []), "models"))]
    known = {b.name for b in kw["backends"]} | {b.url for b in kw["backends"]}
    seen: set[str | None] = set()
    for i, entry in enumerate(models):
        if entry.launch is not None:
            if names.key(entry.name) in seen:
                raise ConfigError(f"models[{i}].name: {entry.name!r} is already a managed model")
            seen.add(names.key(entry.name))
        elif missing := [b for b in entry.backends if b not in known]:
            raise ConfigError(f"models[{i}].backend: no backend named {missing[0]!r}")
    kw["models"] = tuple(models)
    kw["library"] = catalog.settings(data)
    kw["auth"] = auth_config.parse(data, source)
    kw["metrics"] = metrics_config.parse(data)
    return Config(**kw)


_MODEL_KEYS = {"name", "backend", "served", "family", "parameter_size", "quantization_level",
               "size", "capabilities", "options", "fim", "launch", "system", *toolconf.KEYS}  # fmt: skip


def _model(data: Any, where: str) -> ModelEntry:
    _require_mapping(data, where, _MODEL_KEYS)
    launch = launch_settings.parse(data["launch"], f"{where}.launch") if "launch" in data else None
    if launch is not None and "backend" in data:
        raise ConfigError(f"{where}.launch: a model is either launched by the proxy or served by a backend, not both")
    for key in ("name",) if launch else ("name", "backend", "served"):
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
    replicas = routing_config.backend_names(data["backend"], f"{where}.backend") if launch is None else ("",)
    return ModelEntry(
        name=name,
        backend=replicas[0],
        backends=replicas if launch is None else (),
        served=_str(data.get("served", name), f"{where}.served"),
        family=_str(data["family"], f"{where}.family") if "family" in data else None,
        parameter_size=_optional_str(data, "parameter_size", where),
        quantization_level=_optional_str(data, "quantization_level", where),
        size=size,
        capabilities=caps,
        options=dict(options),
        fim=_choice(data["fim"], f"{where}.fim", tuple(FIM_TEMPLATES)) if "fim" in data else None,
        launch=launch,
        system=_optional_str(data, "system", where),
        tools=toolconf.parse(data, where),
    )
