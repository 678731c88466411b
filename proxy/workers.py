"""Several worker processes on one port (SO_REUSEPORT): the kernel spreads connections
over them, so streaming CPU scales past one Python process (performance.md B6).

Each worker is a complete proxy with its own event loop, connection pool and model
discovery; the parent only starts them, forwards SIGTERM/SIGINT and exits non-zero if
one dies, so systemd restarts the whole service.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
import time
from dataclasses import replace
from types import FrameType

from proxy.config import Config
from proxy.managed.control import Owner
from proxy.server import serve


def run(config: Config) -> int:
    count = config.worker_count()
    if count == 1:
        return serve(config, reuse_port=False)
    owner = _managed_owner(config)
    if owner is not None:
        config = replace(config, managed_socket=owner.path)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(config,), name=f"worker-{i}") for i in range(count)]
    for proc in procs:
        proc.start()
    stopping = False

    def stop(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.is_alive() and proc.pid:
                proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = 0
    while any(p.is_alive() for p in procs):
        for proc in procs:
            if not proc.is_alive() and proc.exitcode and not stopping:
                print(f"ollama-vllm-proxy: {proc.name} exited with code {proc.exitcode}; stopping", file=sys.stderr)
                code = 1
                stop(signal.SIGTERM, None)
        time.sleep(0.2)
    for proc in procs:
        proc.join()
    if owner is not None:
        owner.stop()  # the workers are gone: stop every vLLM child
    return code


def _managed_owner(config: Config) -> Owner | None:
    """With managed models, this process owns them (proxy/managed/control.py); the
    workers ask it over a Unix socket."""
    if not config.managed:
        return None
    from proxy import logs  # noqa: PLC0415
    from proxy.managed import service  # noqa: PLC0415

    logs.configure(config.log_level, config.log_format)
    owner = Owner(lambda: service.scheduler(config))
    owner.start()
    return owner


def _worker(config: Config) -> None:
    sys.exit(serve(config, reuse_port=True))
