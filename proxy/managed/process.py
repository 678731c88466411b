"""The seam between the model scheduler and the processes it runs.

The scheduler decides what runs and when; a ``Launcher`` starts one vLLM OpenAI server
for a ``LaunchSpec`` and hands back a ``Child`` to watch and stop. Tests give the
scheduler a fake launcher; production uses the subprocess launcher.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

# vLLM's OpenAI-compatible server entry point (vllm/entrypoints/openai/api_server.py).
VLLM_MODULE = "vllm.entrypoints.openai.api_server"


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one vLLM server for one Ollama model."""

    name: str  # the Ollama name clients ask for, e.g. "qwen3:8b" (used in logs)
    model: str  # vLLM --model: a Hugging Face id or a local path
    served: str  # vLLM --served-model-name, the name sent upstream
    command: tuple[str, ...]  # the program prefix, e.g. (sys.executable, "-m", VLLM_MODULE)
    args: tuple[str, ...] = ()  # extra vLLM arguments (family defaults, --vllm-args, config)
    env: Mapping[str, str] = field(default_factory=dict)  # added to the proxy's environment
    gpu_share: float | None = None  # fraction of one device; → --gpu-memory-utilization
    device: str = "0"  # capacity accounting key (from CUDA_VISIBLE_DEVICES when set)


class StartFailed(Exception):
    """vLLM did not become ready: it exited, or the ready timeout passed."""

    def __init__(self, reason: str, log_tail: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.log_tail = log_tail  # the last lines vLLM printed, for the client's error text


class Child(Protocol):
    """One running vLLM server process (and the processes it started)."""

    @property
    def url(self) -> str:  # base URL without /v1, e.g. "http://127.0.0.1:40123"
        ...

    @property
    def pid(self) -> int: ...

    async def ready(self, timeout: float) -> None:
        """Return once the server answers requests; raise ``StartFailed`` (with the log
        tail) if it exits first or ``timeout`` seconds pass."""

    async def exited(self) -> int:
        """Resolve with the exit code when the process ends, for any reason."""

    async def stop(self, grace: float) -> None:
        """SIGTERM the whole process group, SIGKILL after ``grace`` seconds, reap it."""

    def log_tail(self, lines: int = 20) -> tuple[str, ...]:
        """The last lines of the process's output."""


class Launcher(Protocol):
    async def launch(self, spec: LaunchSpec) -> Child:
        """Start vLLM for ``spec`` on a free loopback port; raise ``StartFailed`` if the
        program cannot even be started (e.g. the Python named has no vLLM)."""
