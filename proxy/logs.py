"""structlog set-up: console lines on a terminal, JSON lines otherwise (for journald).

Every line, ours and aiohttp's, passes a scrubber that masks the backends' passwords and
api keys, the proxy's API keys and any bearer token (proxy/redact.py); tracebacks never
include local variables, whose reprs could hold a request body or a secret."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping, Sequence
from typing import Any

import structlog

from proxy.redact import scrub, scrub_fields

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


_SECRETS: list[str] = []  # what both scrubbers mask; a reload adds the new configuration's


def add_secrets(secrets: tuple[str, ...]) -> None:
    """After a reload: mask the new backends' secrets too (the old ones stay masked)."""
    _SECRETS.extend(s for s in secrets if s not in _SECRETS)


def configure(level: str = "info", fmt: str = "auto", secrets: tuple[str, ...] = ()) -> None:
    _SECRETS[:] = secrets
    use_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor
    if use_json:
        shared.append(structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False)))
        renderer = structlog.processors.JSONRenderer()
    else:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, _Scrubber(_SECRETS), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),  # one write per line: workers share the pipe
        cache_logger_on_first_use=True,
    )
    # aiohttp's own loggers: warnings and errors only; the canonical line replaces access logs.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_ScrubbingFormatter(_SECRETS, "%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])


class _Scrubber:
    def __init__(self, secrets: Sequence[str]) -> None:  # the list configure() keeps: a reload extends it
        self._secrets = secrets

    def __call__(self, _: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        return scrub_fields(event, tuple(self._secrets))


class _ScrubbingFormatter(logging.Formatter):
    def __init__(self, secrets: Sequence[str], fmt: str) -> None:
        super().__init__(fmt)
        self._secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record), tuple(self._secrets))
