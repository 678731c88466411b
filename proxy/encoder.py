"""vLLM's SSE bytes in, Ollama's reply bytes out: the one loop every generation uses.

``feed(data, now_ns)`` takes the body bytes of one upstream read and returns the NDJSON
lines to send for them (each ``{...}\\n``); ``finish(now_ns)`` returns what is left plus
the final ``done: true`` line. With ``fold_key`` set (``stream: false``) ``feed`` returns
nothing and ``finish`` returns the one folded JSON object instead. The streaming relay
(``fastrelay``), the non-streaming reply (``streaming``) and the golden tests all use
this class. Pure: no I/O; the monotonic time is passed in and ``created_at`` comes from
the injected callable. Errors raise ``errors.ProxyError`` (mostly ``BackendError``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from proxy.sse import DONE, SSEDecoder
from proxy.translate.stream import StreamTranslator, fold

_LINE = orjson.OPT_APPEND_NEWLINE


class Encoder:
    __slots__ = ("_closed", "_created_at", "_fold_key", "_held", "_salvage", "sse", "translator")

    def __init__(self, translator: StreamTranslator, created_at: Callable[[], str], fold_key: str | None = None) -> None:
        self.translator = translator
        self.sse = SSEDecoder()
        self._created_at = created_at
        self._fold_key = fold_key  # "message" (chat) or "" (generate) for a folded reply
        self._held: list[dict[str, Any]] = []  # folding: every chunk so far
        self._salvage: list[dict[str, Any]] = []  # translated before an error in the same read
        self._closed: list[dict[str, Any]] | None = None  # what ``close`` translated

    def feed(self, data: bytes, now_ns: int) -> bytes:
        events = self.sse.feed(data)
        if not events:
            return b""
        if len(events) == 1 and self._fold_key is None:  # the usual read: one token
            line = self.translator.line(events[0], self._created_at(), now_ns)
            if line is not None:
                return line
        objects = self._translate(events, now_ns)
        if self._fold_key is not None:
            self._held += objects
            return b""
        if len(objects) == 1:  # the usual read: one token
            return orjson.dumps(objects[0], option=_LINE)
        return b"".join([orjson.dumps(o, option=_LINE) for o in objects])

    @property
    def created_at(self) -> Callable[[], str]:
        return self._created_at

    def fast_line(self) -> tuple[bytes, bytes, tuple[bytes, bytes, bytes, bytes], bytes] | None:
        """The translator's ``fast_line`` while the next read may be relayed in C: a
        streamed reply, no part of an event held, not closed."""
        if self._fold_key is not None or self._closed is not None or not self.sse.idle:
            return None
        return self.translator.fast_line()

    def close(self, now_ns: int) -> None:
        """The upstream body is complete: translate an event it left unterminated, so
        the translator's state is final before ``finish``."""
        if self._closed is None:
            self._closed = self._translate(self.sse.close(), now_ns)

    def finish(self, now_ns: int) -> bytes:
        """The rest of the reply once the upstream body is complete (raises if the
        stream is not a complete reply)."""
        self.close(now_ns)
        objects, self._closed = self._closed or [], []
        try:
            final = self.translator.finish(self._created_at(), now_ns)
        except Exception:
            self._salvage = objects
            raise
        if self._fold_key is not None:
            return orjson.dumps(fold(self._held + objects, final, self._fold_key))
        objects.append(final)
        return b"".join([orjson.dumps(o, option=_LINE) for o in objects])

    def _translate(self, events: list[bytes], now_ns: int) -> list[dict[str, Any]]:
        created = self._created_at()
        translator = self.translator
        out: list[dict[str, Any]] = []
        try:
            for event in events:
                if event != DONE:
                    out += translator.feed(event, created, now_ns)
        except Exception:
            self._salvage = out
            raise
        return out

    def salvage(self) -> bytes:
        """After ``feed`` or ``finish`` raised: the lines for the events before the bad
        one, which a stream still delivers ahead of its error line."""
        objects, self._salvage = self._salvage, []
        if self._fold_key is not None:
            return b""
        return b"".join([orjson.dumps(o, option=_LINE) for o in objects])


def error_line(message: str) -> bytes:
    """The ``{"error": ...}`` line that ends a stream which broke after its first byte."""
    return orjson.dumps({"error": message}, option=_LINE)
