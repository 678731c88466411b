"""Incremental Server-Sent Events decoder (pure; no I/O).

``feed(bytes)`` returns the ``data`` payloads of the events completed so far; ``close()``
returns what a stream that ended without a final blank line still held. vLLM frames every
event as ``data: <json>\\n\\n`` (vLLM 0.32, vllm/entrypoints/openai/serving_chat.py), so the fast path splits on ``\\n\\n``;
CRLF framing, ``:`` comment lines (``--sse-keep-alive-interval``, vLLM 0.30+),
multi-line ``data`` and other fields are handled by the general path.
"""

from __future__ import annotations

DONE = b"[DONE]"


class SSEDecoder:
    __slots__ = ("_buffer", "_crlf")

    def __init__(self) -> None:
        self._buffer = b""
        self._crlf = False  # a chunk ended in "\r": its "\n" may open the next chunk

    def feed(self, data: bytes) -> list[bytes]:
        one = not self._buffer and not self._crlf and data.endswith(b"\n\n") and data.find(b"\n") == len(data) - 2
        if one and data.startswith(b"data: ") and b"\r" not in data:  # the usual read: one whole one-line event
            return [data[6:-2]]
        if b"\r" in data or self._crlf:
            data = self._normalise(data)
        buffer = self._buffer + data if self._buffer else data
        if b"\n\n" not in buffer:
            self._buffer = buffer
            return []
        *blocks, self._buffer = buffer.split(b"\n\n")
        events = []
        for block in blocks:
            payload = _payload(block)
            if payload is not None:
                events.append(payload)
        return events

    @property
    def idle(self) -> bool:
        """No part of an event is held: the next read starts a new one."""
        return not self._buffer and not self._crlf

    def close(self) -> list[bytes]:
        block, self._buffer = self._buffer, b""
        payload = _payload(block) if block.strip() else None
        return [payload] if payload is not None else []

    def _normalise(self, data: bytes) -> bytes:
        if self._crlf and data.startswith(b"\n"):
            data = data[1:]
        self._crlf = data.endswith(b"\r")
        return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def _payload(block: bytes) -> bytes | None:
    if block.startswith(b"data: ") and b"\n" not in block:
        return block[6:]
    lines = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            lines.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(lines) if lines else None
