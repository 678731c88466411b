"""The runtime ``Backend``: one per configured, discovered or managed vLLM server, and the
only way to talk to it (open a token stream, post JSON, get JSON or text). It keeps the
server's health, the proxy's requests in flight and the recent time to a response head.
Everything goes over ``h1client`` with one shared keep-alive ``Pool``; failures are the
``errors.*`` that name the backend."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import orjson
import structlog

from proxy import h1client, metrics
from proxy.config import BackendConfig, Config, Timeouts
from proxy.errors import BackendError, BackendTimeout, BackendUnavailable, ConnectTimeout, ProxyError
from proxy.h1body import AsyncBody as AsyncBody  # re-exported: the body of a stream a Backend opened
from proxy.h1client import UpstreamStream as UpstreamStream
from proxy.h1pool import Pool
from proxy.health import Health, Load, parse_metrics

log = structlog.get_logger("proxy.backend")

_LATENCY_WEIGHT = 0.2  # of each new sample in the moving average


class Backend:
    def __init__(
        self,
        config: BackendConfig,
        timeouts: Timeouts,
        pool: Pool,
        clock: Callable[[], float] = time.monotonic,
        health: Health | None = None,
    ) -> None:
        self.config = config
        self.timeouts = timeouts
        self.pool = pool
        self.clock = clock
        self.health = health or Health()
        self.load = Load()
        self.latency_ms: float | None = None  # moving average of the time to a response head
        self.max_num_seqs: int | None = None  # vLLM's batch size, once its /server_info told it
        self._asked_batch = False

    @property
    def name(self) -> str:
        return self.config.name

    def __repr__(self) -> str:
        return f"Backend({self.config.name!r})"

    async def open_stream(self, path: str, body: Mapping[str, Any], request_id: str = "") -> UpstreamStream:
        """POST an inference request; counted in flight until the stream is closed."""
        self.load.inflight += 1
        began = self.clock()
        try:
            stream = await h1client.open_stream(self.timeouts, self.config, path, body, request_id, pool=self.pool)
        except BaseException as exc:
            self.load.inflight -= 1
            if isinstance(exc, ProxyError):
                self._observe(exc)
            raise
        stream.on_close = self._ended
        if not self.health.up:
            self.health.succeeded()  # it answered: back in (a probe would say the same)
            metrics.backend_up(self.name, True)
        sample = (self.clock() - began) * 1000
        self.latency_ms = sample if self.latency_ms is None else self.latency_ms + _LATENCY_WEIGHT * (sample - self.latency_ms)
        return stream

    async def post_json(self, path: str, body: Mapping[str, Any], request_id: str = "") -> Any:
        stream = await self.open_stream(path, body, request_id)
        return self._json(await self._read(stream), path)

    async def get_json(self, path: str) -> Any:
        raw = await self.get(path)
        return self._json(raw, path) if raw.strip() else {}

    async def get(self, path: str) -> bytes:
        """A short control-plane GET (listing, health, sleep state, metrics), bounded by
        ``timeouts.discovery``. Only a connection failure (or no connection in time) counts
        against health here."""
        short = replace(self.timeouts, first_byte=self.timeouts.discovery, idle=self.timeouts.discovery,
                        connect=min(self.timeouts.connect, self.timeouts.discovery))  # fmt: skip
        try:
            stream = await h1client.open_stream(short, self.config, path, None, method="GET", pool=self.pool)
        except BackendTimeout as exc:
            if isinstance(exc, ConnectTimeout):
                self._observe(exc)
            raise BackendTimeout(f"vLLM backend {self.name} ({self.config.public_url}) did not answer {path} in time") from None
        except BackendUnavailable as exc:
            self._observe(exc)
            raise
        return await self._read(stream)

    async def probe(self) -> bool:
        """``GET /health`` for a backend that is out; True when it is back."""
        self.health.probing(self.clock())
        try:
            await self.get("/health")
        except ProxyError as exc:
            self.health.error = exc.message
            return False
        if self.health.succeeded():
            # Its latency figure predates the outage: unknown again, so LeastLoaded's tie-break
            # does not keep a recovered replica idle behind the one that stayed up.
            self.latency_ms = None
            log.info("backend back", backend=self.name)
            metrics.backend_up(self.name, True)
        return True

    async def scrape(self) -> None:
        """vLLM's own view of its load, from ``/metrics``."""
        gauges = parse_metrics((await self.get("/metrics")).decode("utf-8", "replace"))
        self.load.running, self.load.waiting, self.load.kv_cache = gauges["running"], gauges["waiting"], gauges["kv_cache"]

    async def busy(self) -> bool:
        """Whether vLLM has requests running or waiting."""
        await self.scrape()
        return self.load.running + self.load.waiting > 0

    async def learn_batch_size(self) -> None:
        """vLLM's ``max_num_seqs``, the default fair-turn limit, asked once: only a vLLM in
        dev mode (VLLM_SERVER_DEV_MODE=1) answers ``GET /server_info`` (vLLM's
        entrypoints/serve/dev/server_info); its metrics do not carry it."""
        if self._asked_batch or self.config.turns.max_concurrency is not None:
            return
        try:
            info = await self.get_json("/server_info?config_format=json")
        except BackendError as exc:
            self._asked_batch = exc.status < 500  # 404: not in dev mode; asked again after a failure,
            return  # so that every worker comes to the same limit
        except ProxyError:
            return
        self._asked_batch = True
        config = info.get("vllm_config") if isinstance(info, dict) else None
        seqs = _field(config, "scheduler_config", "max_num_seqs")
        if seqs:  # per data-parallel rank (vllm/config/scheduler.py)
            self.max_num_seqs = seqs * (_field(config, "parallel_config", "data_parallel_size") or 1)
            log.info("backend batch size", backend=self.name, max_num_seqs=self.max_num_seqs)

    async def list_models(self) -> list[dict[str, Any]]:
        data = await self.get_json("/v1/models")
        return [c for c in data.get("data") or [] if isinstance(c, dict)] if isinstance(data, dict) else []

    async def probe_capabilities(self, served: str) -> tuple[str, ...]:
        """What a served model can do, learned once with tiny requests: a pooling server
        answers ``/v1/embeddings`` and nothing else; a generative one takes tools only with
        a tool parser and images only if it is multimodal. Only a definite refusal (4xx)
        removes a capability; a probe that fails otherwise keeps it, so vLLM decides."""
        if await self._accepts("/v1/embeddings", {"model": served, "input": "probe"}) is True:
            return ("embedding",)
        caps = ["completion"]
        base = {"model": served, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
        if await self._accepts("/v1/chat/completions", {**base, "tools": [_PROBE_TOOL]}) is not False:
            caps.append("tools")
        image = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": _PROBE_IMAGE}}]
        if await self._accepts("/v1/chat/completions", {**base, "messages": [{"role": "user", "content": image}]}) is not False:
            caps.append("vision")
        return tuple(caps)

    async def _accepts(self, path: str, body: Mapping[str, Any]) -> bool | None:
        """True: answered; False: refused with a 4xx; None: could not tell."""
        patient = replace(self.timeouts, first_byte=self.timeouts.discovery * 6)
        probe = Backend(self.config, patient, self.pool, self.clock, self.health)
        try:
            await probe.post_json(path, body)
        except BackendError as exc:
            return False if 400 <= exc.status < 500 else None
        except ProxyError:
            return None
        return True

    async def _read(self, stream: UpstreamStream) -> bytes:
        try:
            return await AsyncBody(stream).read()
        finally:
            stream.close()

    def _json(self, raw: bytes, path: str) -> Any:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BackendError(f"vLLM backend {self.name} sent a body that is not JSON on {path}", 502) from None

    def _ended(self, end: tuple[ProxyError | None] | None) -> None:
        """The stream was closed. A body read to its end is a success; one the backend broke
        off after the head (the connection dropped, broken framing, silence past
        ``timeouts.idle``) counts as a failure like a 5xx, so a backend whose streams keep
        breaking is taken out. Success is counted here, not at the head, so those failures
        add up; a stream the proxy closed first (the client left) counts as neither."""
        self.load.inflight -= 1
        if end is None:
            return
        error = end[0]
        if error is None:
            self.health.succeeded()
        elif self.health.failed(self.clock(), error.message, hard=False):
            log.warning("backend out", backend=self.name, error=error.message, cooldown_s=self.health.cooldown_s)

    def _observe(self, exc: ProxyError) -> None:
        """Passive health: connection failures, 5xx answers and timeouts."""
        hard = isinstance(exc, ConnectTimeout) or (isinstance(exc, BackendUnavailable) and not isinstance(exc, BackendError))
        if not (hard or isinstance(exc, BackendTimeout) or (isinstance(exc, BackendError) and exc.status >= 500)):
            if self.health.succeeded():  # a 4xx is an answer: the server is up
                metrics.backend_up(self.name, True)
            return
        if self.health.failed(self.clock(), exc.message, hard):
            log.warning("backend out", backend=self.name, error=exc.message, cooldown_s=self.health.cooldown_s)
            metrics.backend_up(self.name, False)


def _field(config: Any, section: str, key: str) -> int | None:
    """A positive whole number in vLLM's JSON config dump, or None."""
    part = config.get(section) if isinstance(config, dict) else None
    value = part.get(key) if isinstance(part, dict) else None
    return value if type(value) is int and value > 0 else None


class Backends:
    """Every ``Backend`` of the process, by name (configured ones) or URL (managed
    models' servers, whose URL is known once they run), over one connection pool."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic, pool: Pool | None = None) -> None:
        self.timeouts = config.timeouts
        self.clock = clock
        self.routing = config.routing
        self.pool = pool or Pool(clock=clock)
        self._by_name = {b.name: self.make(b) for b in config.backends}
        self._leased: dict[str, Backend] = {}
        for backend in self._by_name.values():
            metrics.backend_up(backend.name, backend.health.up)

    def __getitem__(self, name: str) -> Backend:
        return self._by_name[name]

    def __iter__(self) -> Any:
        return iter(self._by_name.values())

    def make(self, config: BackendConfig) -> Backend:
        """A backend outside the configured list (a managed model's placeholder)."""
        health = Health(cooldown_s=self.routing.cooldown, probe_s=self.routing.probe_interval)
        return Backend(config, self.timeouts, self.pool, self.clock, health)

    @property
    def inflight(self) -> int:
        """Requests of this process in flight on any of these backends."""
        return sum(b.load.inflight for b in (*self._by_name.values(), *self._leased.values()))

    def inherit(self, old: Backends) -> None:
        """Keep what ``old`` learned (health, latency, vLLM's batch size) about the servers
        it shares with these by name and settings: a reload must not forget that a server is
        out, nor the fair-turn limit its /server_info gave."""
        for name, backend in self._by_name.items():
            before = old._by_name.get(name)
            if before is not None and before.config == backend.config:
                backend.health, backend.latency_ms = before.health, before.latency_ms
                backend.max_num_seqs, backend._asked_batch = before.max_num_seqs, before._asked_batch
                metrics.backend_up(name, backend.health.up)

    def at(self, template: BackendConfig, url: str) -> Backend:
        """The backend at ``url`` (a managed model's running vLLM), made once."""
        backend = self._leased.get(url)
        if backend is None or backend.config.name != template.name:
            backend = self._leased[url] = self.make(replace(template, url=url))
            metrics.backend_up(backend.name, backend.health.up)
        return backend

    def close(self) -> None:
        self.pool.close()


_PROBE_TOOL = {"type": "function", "function": {"name": "probe", "description": "capability probe",
                                                "parameters": {"type": "object", "properties": {}}}}  # fmt: skip
# A 1x1 PNG: the smallest image a multimodal model accepts.
_PROBE_IMAGE = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
