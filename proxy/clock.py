"""Wall-clock strings for ``created_at``."""

from __future__ import annotations

import time

from proxy.translate.common import rfc3339


class Clock:
    """``created_at`` strings cached per millisecond: formatting costs as much as a
    whole orjson parse and render of one stream event."""

    __slots__ = ("_ms", "_text")

    def __init__(self) -> None:
        self._ms = -1
        self._text = ""

    def created_at(self) -> str:
        now = time.time_ns()
        ms = now // 1_000_000
        if ms != self._ms:
            self._ms, self._text = ms, rfc3339(now)
        return self._text
