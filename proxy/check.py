"""``ollama-vllm-proxy check``: the configuration is valid, every backend answers
``GET /v1/models`` in time (``timeouts.discovery``), and these are the models the proxy
would serve. Exit 0 when all holds, 1 when a backend is unreachable or a managed model's
Python is missing; a configuration error exits 2 before this runs (as ``serve`` does).
Usable as systemd's ``ExecStartPre=``."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import TextIO

from proxy.backend import Backend, Backends
from proxy.config import Config
from proxy.errors import ProxyError
from proxy.managed import weights
from proxy.registry import Registry


def run(config: Config, out: TextIO = sys.stdout) -> int:
    return asyncio.run(report(config, out))


async def report(config: Config, out: TextIO = sys.stdout) -> int:
    """What ``check`` prints, and its exit code."""
    problems: list[str] = []
    print(f"config {config.source}: ok", file=out)
    backends = Backends(config)
    registry = Registry(config, backends, weights.present)
    try:
        results = await asyncio.gather(*(_listing(s.backend, registry) for s in registry.backends))
    finally:
        backends.close()
    for state, error in zip(registry.backends, results, strict=True):
        if error:
            problems.append(f"backend {state.config.name} ({state.config.public_url}) is unreachable: {error}")
            print(f"backend {state.config.name} {state.config.public_url}: UNREACHABLE: {error}", file=out)
        else:
            print(f"backend {state.config.name} {state.config.public_url}: ok, {len(state.cards)} models", file=out)
    python = config.vllm_python or sys.executable
    if config.managed and not os.access(python, os.X_OK):
        problems.append(f"vllm_python {python!r} is not an executable file (needed by the launch: models)")
    models = registry.models()
    print(f"models it would serve ({len(models)}):", file=out)
    for facts in sorted(models, key=lambda f: f.name):
        route = registry.resolve(facts.name)
        assert route is not None
        where = (
            "started on demand (launch:)"
            if route.managed
            else f"on {', '.join(b.name for b in route.replicas or (route.backend,))} as {facts.served!r}"
        )
        print(f"  {facts.name}  {where}", file=out)
    for problem in problems:
        print(f"ollama-vllm-proxy: check failed: {problem}", file=sys.stderr)
    return 1 if problems else 0


async def _listing(backend: Backend, registry: Registry) -> str:
    """Lists one backend into the registry; the error text when it does not answer."""
    try:
        cards = await backend.list_models()
    except ProxyError as exc:
        registry.mark_down(backend.name, exc.message)
        return exc.message
    registry.update(backend.name, cards, time.time_ns())
    return ""
