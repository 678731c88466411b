"""Making the configuration again on SIGHUP: the recipe (file and flags) start-up used,
and what a reload applies.

A reload applies the backends, the non-managed models and aliases, the timeouts, limits
and everything handlers read per request. What a running process cannot change keeps its
start-up value until the next restart, and the reload names it in its log line: the
listen address, the worker count, the event loop, logging, CORS origins, ``metrics_listen``, and the managed
models (``launch:`` entries, the ``catalog:`` library, and the ``vllm_python``/``max_loaded``/``max_queue``/
``load_timeout`` their scheduler was built with), since their vLLM processes and
scheduler outlive a reload.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from proxy.config import Config, ConfigError, load

_EARLY_SIGHUP: list[bool] = []  # a SIGHUP that came before the event loop took the signal over


def sighup_before_listening() -> None:
    """For a signal handler that runs before ``serve`` listens: reload once it does."""
    _EARLY_SIGHUP.append(True)


def take_early_sighup() -> bool:
    """Whether such a SIGHUP came (and forget it)."""
    came = bool(_EARLY_SIGHUP)
    _EARLY_SIGHUP.clear()
    return came


RESTART_ONLY = ("listen", "workers", "event_loop", "log_level", "log_format", "origins", "vllm_python",
                "max_loaded", "max_queue", "load_timeout", "library", "metrics")  # fmt: skip


@dataclass(frozen=True)
class Recipe:
    """The command line's part of the configuration, kept to make it again."""

    path: str | None = None
    backends: tuple[str, ...] = ()
    listen: str | None = None
    workers: int | None = None
    models: tuple[str, ...] = ()
    vllm_python: str | None = None
    vllm_args: str = ""

    def build(self, env: Mapping[str, str]) -> Config:
        config = load(self.path) if self.path else Config()
        config = config.with_cli(list(self.backends), self.listen, dict(env), self.workers, list(self.models),
                                 self.vllm_python, self.vllm_args)  # fmt: skip
        if not config.backends and not config.managed and config.library.catalog is None:
            raise ConfigError("no backend: pass --backend URL or --model MODEL, or list backends or launch: models in the config")
        return config


def merge(running: Config, new: Config) -> tuple[Config, list[str]]:
    """The configuration a reload applies, and the keys whose change waits for a restart."""
    waiting = [key for key in RESTART_ONLY if getattr(running, key) != getattr(new, key)]
    if running.managed != new.managed:
        waiting.append("models[].launch")
    applied = replace(
        new,
        models=(*(m for m in new.models if m.launch is None), *running.managed),
        managed_socket=running.managed_socket,
        admission_socket=running.admission_socket,
        **{key: getattr(running, key) for key in RESTART_ONLY},
    )
    return applied, waiting
