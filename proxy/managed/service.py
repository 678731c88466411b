"""Wiring of managed models into the app: the scheduler's plans from the config, the
process launcher, the host a worker talks to (in-process, or the owner over its control
socket with ``--workers N``), and the ``/api/ps`` rows."""

from __future__ import annotations

import functools
import shutil
import subprocess
from datetime import UTC, datetime

import structlog

from proxy import names
from proxy.config import Config
from proxy.managed import library
from proxy.managed.host import Clock, Host, Plan
from proxy.managed.process import Child, Launcher, LaunchSpec, StartFailed
from proxy.managed.scheduler import Scheduler
from proxy.registry import Registry
from proxy.translate.models import ModelFacts

log = structlog.get_logger("proxy.managed")


def plans(config: Config) -> list[Plan]:
    out = []
    for entry in library.managed(config):
        launch = entry.launch
        assert launch is not None
        parsed = names.parse(entry.name)
        assert parsed is not None  # config validated it
        spec = launch.spec(parsed.display(), entry.served, config.vllm_python)
        out.append(Plan(name=parsed.display(), spec=spec, share=launch.share, keep_alive=launch.keep_alive,
                        pinned=launch.pinned, preload=launch.preload))  # fmt: skip
    return out


def scheduler(config: Config, launcher: Launcher | None = None, clock: Clock | None = None) -> Scheduler:
    return Scheduler(plans(config), launcher or subprocess_launcher(config.vllm_python), clock,
                     keep_alive=config.keep_alive, max_loaded=config.max_loaded, max_queue=config.max_queue,
                     queue_timeout=config.queue_timeout, load_timeout=config.load_timeout)  # fmt: skip


def host(config: Config, launcher: Launcher | None = None) -> Host:
    """This worker's view of the managed models: its own scheduler, or (``--workers N``)
    a client of the process that owns them."""
    if config.managed_socket:
        from proxy.managed.control import ControlClient  # noqa: PLC0415 - only with several workers

        return ControlClient(config.managed_socket)
    return scheduler(config, launcher)


def subprocess_launcher(python: str) -> Launcher:
    """The real launcher (proxy/managed/launcher.py), or one that explains its absence."""
    try:
        from proxy.managed import launcher  # type: ignore[attr-defined,unused-ignore]  # noqa: PLC0415
    except ImportError:
        return _NoLauncher()
    made: Launcher = launcher.SubprocessLauncher(python)
    return made


class _NoLauncher:
    async def launch(self, spec: LaunchSpec) -> Child:
        raise StartFailed("this build of the proxy has no process launcher (proxy/managed/launcher.py)")


async def managed_ps(managed: Host, registry: Registry, forever: datetime) -> list[tuple[ModelFacts, str, int, tuple[str, ...]]]:
    """/api/ps rows of the running managed models. ``size_vram`` is the model's share of
    its device's memory when ``nvidia-smi`` reports it, else the configured ``size``."""
    rows: list[tuple[ModelFacts, str, int, tuple[str, ...]]] = []
    for model in await managed.loaded():
        route = registry.resolve(model.name)
        if route is None:
            continue
        at = model.expires_at
        expires = forever if at is None or at >= forever.timestamp() else datetime.fromtimestamp(at, UTC)
        memory = device_memory(model.device)
        vram = int(model.share * memory) if memory else route.facts.size
        rows.append((route.facts, expires.isoformat(), vram, (route.backend.name,)))
    return rows


@functools.cache
def device_memory(device: str) -> int | None:
    """Total bytes of the first GPU in ``device`` (a CUDA_VISIBLE_DEVICES value), or None."""
    smi = shutil.which("nvidia-smi")
    first = device.split(",")[0].strip()
    if not smi or not first.isdigit():
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", first],
                             capture_output=True, text=True, timeout=5, check=True).stdout  # fmt: skip
        return int(float(out.split()[0]) * 1024 * 1024)  # MiB
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
