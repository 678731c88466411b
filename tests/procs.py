"""Finding the processes a managed-model test started, from /proc (the tiers that start real processes)."""

from __future__ import annotations

from collections.abc import Callable

from proxy.managed.shim import live_processes


def launched(match: Callable[[list[bytes]], bool]) -> list[int]:
    """Live processes whose command line ``match`` accepts, not counting the launcher's shim
    (proxy/managed/shim.py), which carries the same command line after its own."""
    return [p.pid for p in live_processes(argv=True) if match(p.argv) and not any(a.endswith(b"shim.py") for a in p.argv)]
