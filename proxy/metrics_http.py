"""``GET /metrics``: the series of proxy/metrics.py in Prometheus' text format, on the main
port, or with ``metrics_listen: HOST:PORT`` only on that address (then the main port
answers 404 there, as Ollama does: /metrics is not an Ollama route).

With several workers (``PROMETHEUS_MULTIPROC_DIR`` set, proxy/workers.py) each scrape
sums every process's files, so whichever worker answers gives the whole picture."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess

from proxy.config import Config, split_listen
from proxy.middleware import canonical
from proxy.state import CONFIG

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus' text exposition format
PATH = "/metrics"


def authorize(request: web.Request) -> None:
    """THE access decision for /metrics, on the main port and on ``metrics_listen`` alike:
    every scrape passes here and nowhere else decides. There are no API keys yet, so any
    client that can reach the address may read the metrics (they hold no secret and no
    user name). Once ``api_keys`` exist, this raises the same 401 as every other route
    except ``/`` when the request has no valid ``Authorization: Bearer`` key (Prometheus'
    ``authorization`` scrape setting sends one)."""


async def handler(request: web.Request) -> web.Response:
    authorize(request)
    return web.Response(body=exposition(), headers={"Content-Type": CONTENT_TYPE})


def exposition() -> bytes:
    """The text format: in multiprocess mode merged from every process's files at each
    scrape (prometheus-client's documented pattern), else this process's registry."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped in prometheus-client
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def on_main_port(app: web.Application, config: Config) -> None:
    """Serve /metrics on the main app unless ``metrics_listen`` moves it elsewhere."""
    if not config.metrics.listen:
        app.router.add_get(PATH, handler)


def separate_listener(config: Config, reuse_port: bool) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context for the main app that serves /metrics on ``metrics_listen``, with
    the canonical middleware (one log line per scrape) and nothing else routed there."""

    async def serve(main: web.Application) -> AsyncIterator[None]:
        app = web.Application(middlewares=[canonical])
        app[CONFIG] = config
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
