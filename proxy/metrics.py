"""The proxy's Prometheus series (docs/metrics.md lists them) and the small typed API that
records them. Made with prometheus-client; exposed by ``proxy/metrics_http.py``.

With ``--workers N`` the supervisor (proxy/workers.py) sets ``PROMETHEUS_MULTIPROC_DIR``
before any process imports this module, so every value lives in a per-process file that
a scrape of any worker sums (prometheus-client's multiprocess mode); gauges say how they
combine (``multiprocess_mode``). With one worker the values are plain in-memory ones.

Labels are bounded: ``model`` is a name the registry knows (a requested name it does not
know is ``other``), ``backend`` a configured backend's name, ``route`` the matched route
pattern. Names follow the OpenTelemetry GenAI semantic conventions where one fits
(``gen_ai.server.time_to_first_token`` → ``gen_ai_server_time_to_first_token_seconds``,
with its buckets); the rest are ``ollama_proxy_*``.

Recording happens once per request, from the canonical log point (proxy/middleware.py),
plus at the few events that are not requests (health changes, failovers, model loads).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar, cast

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from proxy import __version__

disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` twin per series (multiprocess mode has none either)

OTHER = "other"  # the model label of a requested name the registry does not know

# OpenTelemetry GenAI bucket boundaries (open-telemetry/semantic-conventions,
# docs/gen-ai/gen-ai-metrics.md).
_DURATION = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
_TTFT = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_TPOT = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
_TOKENS = tuple(float(4**i) for i in range(14))  # 1, 4, 16, ... 67108864
_LOAD = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_WAIT = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

REQUESTS = Counter("ollama_proxy_requests", "Requests answered, by route, model and HTTP status (499: the client hung up)",
                   ("route", "model", "status"))  # fmt: skip
DURATION = Histogram("gen_ai_server_request_duration_seconds", "Time from a request's arrival to its last byte",
                     ("route", "model"), buckets=_DURATION)  # fmt: skip
TTFT = Histogram("gen_ai_server_time_to_first_token_seconds",
                 "Time from a request's arrival to the first token (includes queueing in the proxy and in vLLM)",
                 ("model", "backend"), buckets=_TTFT)  # fmt: skip
TPOT = Histogram("gen_ai_server_time_per_output_token_seconds",
                 "(duration - time to first token) / (output tokens - 1), for successful generations",
                 ("model",), buckets=_TPOT)  # fmt: skip
TOKENS = Histogram("gen_ai_client_token_usage", "Tokens per request as vLLM counted them, type input (prompt) or output",
                   ("model", "type"), buckets=_TOKENS)  # fmt: skip
INFLIGHT = Gauge("ollama_proxy_inflight_requests", "Requests sent or being sent to a backend and not finished",
                 ("model", "backend"), multiprocess_mode="livesum")  # fmt: skip
QUEUED = Gauge("ollama_proxy_queued_requests", "Requests waiting for admission to a backend",
               ("model", "backend"), multiprocess_mode="livesum")  # fmt: skip
QUEUE_WAIT = Histogram("ollama_proxy_queue_wait_seconds", "Time a request waited for admission to a backend",
                       ("model", "backend"), buckets=_WAIT)  # fmt: skip
REJECTED = Counter("ollama_proxy_rejected_requests", "Requests refused by admission (503), by reason",
                   ("backend", "reason"))  # fmt: skip
BACKEND_UP = Gauge("ollama_proxy_backend_up",
                   "1 while the backend takes requests, 0 while its health check has it out (the lowest of the workers)",
                   ("backend",), multiprocess_mode="livemin")  # fmt: skip
FAILOVERS = Counter("ollama_proxy_failovers", "Requests resent to another replica after their backend failed",
                    ("from_backend", "to_backend"))  # fmt: skip
LOADS = Counter("ollama_proxy_model_loads", "Managed-model starts, by result ok or failed", ("model", "result"))
LOAD_TIME = Histogram("ollama_proxy_model_load_seconds", "Time from starting vLLM for a managed model to it being ready",
                      ("model",), buckets=_LOAD)  # fmt: skip
UNLOADS = Counter("ollama_proxy_model_unloads", "Managed-model stops, by reason", ("model", "reason"))
LOADED = Gauge("ollama_proxy_model_loaded", "1 while a managed model's vLLM runs", ("model",), multiprocess_mode="livemax")
BUILD = Gauge("ollama_proxy_build_info", "Always 1; the proxy's version", ("version",), multiprocess_mode="livemax")
BUILD.labels(__version__).set(1)


# Per-backend gauges whose series a scrape leaves out once their backend is no longer in
# the configuration (a reload removed it): the health at once, the counts once they are 0
# (requests that started before the reload still show until they end).
_HEALTH_GAUGES = frozenset({"ollama_proxy_backend_up"})
_COUNT_GAUGES = frozenset({"ollama_proxy_inflight_requests", "ollama_proxy_queued_requests"})


class Current:
    """A collector over ``source`` (a registry, or the multiprocess collector) that shows
    the per-backend gauges only for ``backends``, the configured ones. In multiprocess mode
    a removed label set cannot be deleted from the other processes' files, so the scrape
    filters instead, the same way in both modes."""

    def __init__(self, source: Collector, backends: Collection[str]) -> None:
        self._source, self._backends = source, backends

    def collect(self) -> Iterator[Metric]:
        families: Iterable[Metric] = self._source.collect()
        for family in families:
            if family.name in _HEALTH_GAUGES or family.name in _COUNT_GAUGES:
                kept = [s for s in family.samples if self._shows(family.name, s.labels.get("backend", ""), s.value)]
                if len(kept) != len(family.samples):
                    family = _with_samples(family, kept)
            yield family

    def _shows(self, family: str, backend: str, value: float) -> bool:
        return backend in self._backends or (family in _COUNT_GAUGES and value != 0)


def _with_samples(family: Metric, samples: list[Sample]) -> Metric:
    out = Metric(family.name, family.documentation, family.type, family.unit)
    out.samples = samples
    return out


@dataclass(frozen=True)
class Outcome:
    """One finished request, as the middleware saw it. Times are seconds from arrival."""

    route: str
    model: str  # a registry name, OTHER, or "" for a request that names no model
    backend: str  # "" when no backend was involved
    status: int
    seconds: float
    first_token: float | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None


_Family = TypeVar("_Family", Counter, Gauge, Histogram)
_CHILDREN: dict[tuple[object, tuple[str, ...]], Any] = {}


def _of(family: _Family, *labels: str) -> _Family:
    """``family.labels(*labels)``, remembered (no label set is ever removed, and the sets
    are bounded): ``labels`` (checks, a lock, the key) is most of a per-request update."""
    key = (family, labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = family.labels(*labels)
    return cast(_Family, child)


def observe(outcome: Outcome) -> None:
    """Record a finished request: count, duration, and for a generation its time to first
    token, tokens and time per output token."""
    model = outcome.model
    _of(REQUESTS, outcome.route, model, str(outcome.status)).inc()
    _of(DURATION, outcome.route, model).observe(outcome.seconds)
    if outcome.first_token is not None:
        _of(TTFT, model, outcome.backend).observe(outcome.first_token)
    if outcome.prompt_tokens is not None:
        _of(TOKENS, model, "input").observe(outcome.prompt_tokens)
    if outcome.output_tokens is not None:
        _of(TOKENS, model, "output").observe(outcome.output_tokens)
        if outcome.status == 200 and outcome.first_token is not None and outcome.output_tokens > 1:
            _of(TPOT, model).observe(max(0.0, outcome.seconds - outcome.first_token) / (outcome.output_tokens - 1))


class Inflight:
    """A request counted in flight on ``(model, backend)`` while the ``with`` block runs;
    ``move`` re-counts it on another backend (a failover)."""

    def __init__(self, model: str, backend: str) -> None:
        self.model, self.backend = model, backend
        self.active = False

    def __enter__(self) -> Inflight:
        _of(INFLIGHT, self.model, self.backend).inc()
        self.active = True
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        _of(INFLIGHT, self.model, self.backend).dec()
        self.active = False

    def move(self, backend: str) -> None:
        if self.active:
            INFLIGHT.labels(self.model, self.backend).dec()
            INFLIGHT.labels(self.model, backend).inc()
        self.backend = backend


class Queued:
    """For admission control: a request counted as queued for ``(model, backend)`` while
    the ``with`` block runs (``ollama_proxy_queued_requests``)."""

    def __init__(self, model: str, backend: str) -> None:
        self.model, self.backend = model, backend

    def __enter__(self) -> Queued:
        QUEUED.labels(self.model, self.backend).inc()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        QUEUED.labels(self.model, self.backend).dec()


def queue_wait(model: str, backend: str, seconds: float) -> None:
    """For admission control: how long an admitted request waited."""
    QUEUE_WAIT.labels(model, backend).observe(seconds)


def rejected(backend: str, reason: str) -> None:
    """For admission control: a request refused, ``reason`` one of a few fixed words
    (queue_full, queue_timeout). A user at ``max_user_concurrency`` waits, it is not refused."""
    REJECTED.labels(backend, reason).inc()


def backend_up(backend: str, up: bool) -> None:
    BACKEND_UP.labels(backend).set(1 if up else 0)


def failover(from_backend: str, to_backend: str) -> None:
    FAILOVERS.labels(from_backend, to_backend).inc()


def model_loaded(model: str, seconds: float) -> None:
    LOADS.labels(model, "ok").inc()
    LOAD_TIME.labels(model).observe(seconds)
    LOADED.labels(model).set(1)


def model_load_failed(model: str) -> None:
    LOADS.labels(model, "failed").inc()


_UNLOAD_REASONS = {"unload": "unload", "keep_alive 0": "unload", "keep_alive expired": "expired", "shutdown": "shutdown",
                   "exited": "exited"}  # fmt: skip


def model_unloaded(model: str, reason: str) -> None:
    """A managed model's vLLM stopped; ``reason`` as the scheduler logs it, reduced to
    unload, expired, evicted (making room for another model), shutdown or exited."""
    UNLOADS.labels(model, _UNLOAD_REASONS.get(reason, "evicted")).inc()
    LOADED.labels(model).set(0)
