"""Fair-turn settings (proxy/turns.py): per backend ``max_concurrency``,
``max_user_concurrency``, ``max_queue`` and ``queue_timeout``; the last three default to
the top-level keys of the same names. Unset ``max_concurrency``: vLLM's own
``max_num_seqs`` when the backend reveals it (``GET /server_info``, vLLM's dev mode),
else ``DEFAULT_CONCURRENCY``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.confcheck import count, positive
from proxy.turns import Limits

# vLLM's max_num_seqs default on most GPUs (vllm/engine/arg_utils.py get_batch_defaults).
DEFAULT_CONCURRENCY = 256
BACKEND_KEYS = frozenset({"max_concurrency", "max_user_concurrency", "max_queue", "queue_timeout"})


@dataclass(frozen=True)
class BackendTurns:
    """A backend's own settings; None = the default (see the module's text)."""

    max_concurrency: int | None = None
    max_user_concurrency: int | None = None
    max_queue: int | None = None
    queue_timeout: float | None = None

    def limits(self, max_user_concurrency: int, max_queue: int, queue_timeout: float, discovered: int | None) -> Limits:
        """The limits in force, given the top-level keys and vLLM's ``max_num_seqs`` if known."""
        return Limits(
            max_concurrency=self.max_concurrency or discovered or DEFAULT_CONCURRENCY,
            max_user_concurrency=max_user_concurrency if self.max_user_concurrency is None else self.max_user_concurrency,
            max_queue=self.max_queue or max_queue,
            queue_timeout=self.queue_timeout or queue_timeout,
        )


def backend(data: dict[str, Any], where: str) -> BackendTurns:
    """The keys above in a backend's mapping (already checked for unknown keys)."""
    return BackendTurns(
        max_concurrency=count(data["max_concurrency"], f"{where}.max_concurrency", 1) if "max_concurrency" in data else None,
        max_user_concurrency=(
            count(data["max_user_concurrency"], f"{where}.max_user_concurrency", 0) if "max_user_concurrency" in data else None
        ),
        max_queue=count(data["max_queue"], f"{where}.max_queue", 1) if "max_queue" in data else None,
        queue_timeout=positive(data["queue_timeout"], f"{where}.queue_timeout") if "queue_timeout" in data else None,
    )


def max_user_concurrency(data: dict[str, Any]) -> int:
    """The top-level ``max_user_concurrency``: requests one user may run on a backend; 0 = no cap."""
    return count(data["max_user_concurrency"], "max_user_concurrency", 0) if "max_user_concurrency" in data else 0
