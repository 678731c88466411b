"""Runs one proxy process (a worker) until it is told to stop."""

from __future__ import annotations

import asyncio
import signal
import sys

import structlog
from aiohttp import web

from proxy import logs, metrics_http
from proxy.app import create_app
from proxy.config import Config, split_listen


def serve(config: Config, reuse_port: bool = False) -> int:
    logs.configure(config.log_level, config.log_format, config.secrets())
    host, port = split_listen(config.listen)
    app = create_app(config)
    app.on_startup.append(_ignore_sighup)
    if config.metrics.listen:
        app.cleanup_ctx.append(metrics_http.separate_listener(config, reuse_port))
    try:
        web.run_app(
            app,
            loop=_event_loop(config.event_loop),
            host=host,
            port=port,
            handler_cancellation=True,  # a client that hangs up cancels its handler → upstream closed
            backlog=4096,  # aiohttp's 128 drops bursts of new streams
            access_log=None,  # the canonical line per request replaces the access log
            print=lambda *_: None,
            shutdown_timeout=30.0,
            reuse_port=reuse_port,
        )
    except OSError as exc:
        where = exc.filename or config.listen  # metrics_listen's failure names its address
        print(f"ollama-vllm-proxy: cannot listen on {where}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


async def _ignore_sighup(_: web.Application) -> None:
    """SIGHUP will mean reload; until then it must neither kill a worker nor pass silently."""

    def note() -> None:
        structlog.get_logger("proxy.server").warning("SIGHUP: reload is not supported yet; ignoring")

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, note)


def _event_loop(choice: str) -> asyncio.AbstractEventLoop:
    """uvloop when installed (``auto``): with the callback hot path it cut the proxy's
    CPU per streamed event by ~15% in bench/run.py (paced, 256-512 streams)."""
    if choice != "asyncio":
        try:
            import uvloop  # noqa: PLC0415 - optional at run time
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()
