"""Wall-clock strings for ``created_at``."""

from __future__ import annotations

import time
from collections.abc import Callable

from proxy.translate.common import rfc3339

_NS = 1_000_000_000


class Clock:
    """``created_at`` strings cached per millisecond, and their date and time of day per
    second: ``rfc3339`` takes ~4.5 µs (datetime and strftime), as much as a whole relayed
    event costs in Python, and a paced stream's every token falls in a new millisecond.
    ``now_ns`` (``time.time_ns``) is injected by tests."""

    __slots__ = ("_ms", "_now_ns", "_second", "_stamp", "_text")

    def __init__(self, now_ns: Callable[[], int] = time.time_ns) -> None:
        self._now_ns = now_ns
        self._ms = -1
        self._text = ""
        self._second = -1
        self._stamp = ""  # "YYYY-MM-DDTHH:MM:SS" of ``_second``

    def created_at(self) -> str:
        now = self._now_ns()
        ms = now // 1_000_000
        if ms != self._ms:
            second, ns = divmod(now, _NS)
            if second != self._second:
                self._second, self._stamp = second, rfc3339(second * _NS)[:-11]  # without ".000000000Z"
            self._ms, self._text = ms, f"{self._stamp}.{ns:09d}Z"
        return self._text
