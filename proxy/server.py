"""Runs one proxy process (a worker) until it is told to stop, and tells systemd how it is
doing (proxy/notify.py): READY once it listens and the first discovery has run, WATCHDOG
pings from the event loop, RELOADING/READY around a SIGHUP reload, STOPPING on SIGTERM.

SIGTERM/SIGINT: the listener closes at once, requests in flight get ``drain_timeout``
seconds (proxy/drain.py), the process exits 0. SIGHUP: the configuration is made again
from the same file and flags and swapped in (proxy/reconfig.py, proxy/app.py ``reload``);
a configuration that does not load is refused with one log line and the running one kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any

import structlog
from aiohttp import web

from proxy import logs, metrics_http, native, reconfig
from proxy.app import create_app, reload
from proxy.config import Config, ConfigError, split_listen
from proxy.drain import SHUTDOWN_TIMEOUT_S
from proxy.notify import Notifier
from proxy.reconfig import Recipe, merge
from proxy.state import LIVE

log = structlog.get_logger("proxy.server")


def serve(config: Config, reuse_port: bool = False, recipe: Recipe | None = None) -> int:
    logs.configure(config.log_level, config.log_format, config.secrets())
    if not native.BUILT:
        log.warning("token streams take the Python read path: more CPU per token", reason=native.WHY_NOT)
    notifier = Notifier.from_env(os.environ)
    for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        os.environ.pop(var, None)  # for this process only, not for the vLLM it may start
    app = create_app(config)
    if config.metrics.listen:
        app.cleanup_ctx.append(metrics_http.separate_listener(config, reuse_port))
    with asyncio.Runner(loop_factory=lambda: _event_loop(config.event_loop)) as runner:
        return runner.run(_serve(app, config, reuse_port, notifier, recipe))


def _settle_gc() -> None:
    """Once started: what start-up built (modules, the app, pools) stays for the process's
    life, so the cyclic collector stops walking it (``gc.freeze``); in a profile of short
    streams the collector was ~7 % of the request path's CPU, mostly walking those objects."""
    gc.collect()
    gc.freeze()


async def _serve(app: web.Application, config: Config, reuse_port: bool, notifier: Notifier, recipe: Recipe | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads = _Reloads(app, recipe, notifier)
    loop.add_signal_handler(signal.SIGHUP, reloads.request)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        handler_cancellation=True,  # a client that hangs up cancels its handler → upstream closed
        access_log=None,  # the canonical line per request replaces the access log
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    watchdog: asyncio.Task[None] | None = None
    try:
        try:
            started = await _until_stopped(runner.setup(), stop)  # the app's start-up: the first discovery
        except OSError as exc:  # metrics_listen's address, bound at start-up
            print(f"ollama-vllm-proxy: cannot listen on {exc.filename or config.listen}: {exc.strerror}", file=sys.stderr)
            return 1
        if started:
            host, port = split_listen(config.listen)
            # backlog: aiohttp's 128 drops bursts of new streams.
            site = web.TCPSite(runner, host, port, backlog=4096, reuse_port=reuse_port)
            try:
                await site.start()
            except OSError as exc:
                print(f"ollama-vllm-proxy: cannot listen on {config.listen}: {exc.strerror}", file=sys.stderr)
                return 1
            if notifier.watchdog_usec:
                watchdog = asyncio.create_task(_watchdog(notifier, notifier.watchdog_usec / 2e6))
            _settle_gc()
            notifier.ready(_status(app))
            if reconfig.take_early_sighup():
                reloads.request()
            await stop.wait()
        # SIGTERM before it listened too: what the start-up began (connections, managed
        # vLLM children) is stopped by the cleanup below.
        notifier.stopping(f"draining {app[LIVE].current.config.service.drain_timeout:g} s")
        return 0
    finally:
        await reloads.cancel()  # a reload must not swap in a configuration while the app stops
        await runner.cleanup()  # stops listening, drains, cancels what is left; after a cut start-up, exits what it entered
        if watchdog is not None:  # pings go on while draining: systemd must not kill a drain
            watchdog.cancel()
        notifier.close()


async def _until_stopped(start: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run ``start`` unless ``stop`` is set first (then cancel it); True if it finished."""
    task, stopped = asyncio.ensure_future(start), asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


async def _watchdog(notifier: Notifier, every_s: float) -> None:
    """On the event loop itself: a loop that is stuck stops the pings, and systemd restarts
    the service (``WatchdogSec=``)."""
    while True:
        notifier.watchdog()
        await asyncio.sleep(every_s)


class _Reloads:
    """SIGHUP handling: one reload at a time, in signal order."""

    def __init__(self, app: web.Application, recipe: Recipe | None, notifier: Notifier) -> None:
        self._app, self._recipe, self._notifier = app, recipe, notifier
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def request(self) -> None:
        task = asyncio.get_running_loop().create_task(self._reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _reload(self) -> None:
        async with self._lock:
            self._notifier.reloading()
            try:
                await self._apply()
            except Exception as exc:  # noqa: BLE001 - a failed reload must never leave systemd "reloading"
                if isinstance(exc, ConfigError):
                    log.error("reload failed: keeping the running configuration", error=str(exc))
                else:
                    log.exception("reload failed: keeping the running configuration", error=str(exc))
                self._notifier.ready(f"reload failed: {exc}")
            else:
                self._notifier.ready(_status(self._app))

    async def _apply(self) -> None:
        if self._recipe is None:
            raise ConfigError("this process was not started from a command line; nothing to reload from")
        applied, waiting = merge(self._app[LIVE].current.config, self._recipe.build(os.environ))
        logs.add_secrets(applied.secrets())
        await reload(self._app, applied)
        log.info("configuration reloaded", source=applied.source, backends=len(applied.backends),
                 models=len(self._app[LIVE].current.registry.models()), restart_needed=waiting)  # fmt: skip


def _status(app: web.Application) -> str:
    live = app[LIVE].current
    up = sum(1 for b in live.registry.backends if b.up)
    return f"{len(live.registry.models())} models, {up}/{len(live.registry.backends)} backends up"


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
