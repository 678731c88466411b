"""``GET /metrics``: the series of proxy/metrics.py in Prometheus' text format, on the main
port, or with ``metrics_listen: HOST:PORT`` only on that address (then the main port
answers 404 there, as Ollama does: /metrics is not an Ollama route).

With several workers (``PROMETHEUS_MULTIPROC_DIR`` set, proxy/workers.py) each scrape
sums every process's files, so whichever worker answers gives the whole picture."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Collection

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess

from proxy import auth
from proxy.config import Config, split_listen
from proxy.metrics import Current
from proxy.middleware import canonical
from proxy.state import DRAIN, LIVE, TIMERS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus' text exposition format
PATH = "/metrics"


# AUTH: who may read /metrics is decided in one place, proxy/auth.py's ``identify``, the
# same check as every Ollama route: with ``api_keys`` configured a scrape needs a valid
# ``Authorization: Bearer`` key (Prometheus' ``authorization`` scrape setting sends one),
# else 401; without keys anyone who reaches the address may scrape. The main app runs it
# before every route; the metrics_listen app runs the same middleware:
MIDDLEWARES = [canonical, auth.identify]


async def handler(request: web.Request) -> web.Response:
    backends = request.app[LIVE].current.registry.backend_names()
    return web.Response(body=exposition(backends), headers={"Content-Type": CONTENT_TYPE})


def exposition(backends: Collection[str]) -> bytes:
    """The text format: in multiprocess mode merged from every process's files at each
    scrape (prometheus-client's documented pattern), else this process's registry; the
    per-backend gauges only for ``backends`` (proxy/metrics.py ``Current``)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped in prometheus-client
        return generate_latest(Current(registry, backends))
    return generate_latest(Current(REGISTRY, backends))


def on_main_port(app: web.Application, config: Config) -> None:
    """Serve /metrics on the main app unless ``metrics_listen`` moves it elsewhere."""
    if not config.metrics.listen:
        app.router.add_get(PATH, handler)


def separate_listener(config: Config, reuse_port: bool) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context for the main app that serves /metrics on ``metrics_listen``, with
    one log line per scrape and the key check (``MIDDLEWARES``) and nothing else routed
    there."""

    async def serve(main: web.Application) -> AsyncIterator[None]:
        app = web.Application(middlewares=MIDDLEWARES)
        app[LIVE], app[DRAIN], app[TIMERS] = main[LIVE], main[DRAIN], main[TIMERS]  # the keys a reload brings apply here too
        app.router.add_get(PATH, handler)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        host, port = split_listen(config.metrics.listen)
        try:
            await web.TCPSite(runner, host, port, reuse_port=reuse_port).start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(exc.errno, exc.strerror, config.metrics.listen) from None  # serve() names the address
        yield
        await runner.cleanup()

    return serve
