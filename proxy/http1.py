"""Incremental HTTP/1.1 response framing for ``fastrelay`` (pure; no I/O).

``read_head(buffer)`` finds the final response head (1xx heads are skipped). A
``BodyReader`` then takes the body, whatever the read boundaries, framed as RFC 9112 §6.3
says: ``Transfer-Encoding: chunked``, ``Content-Length``, or until the connection closes.
Malformed framing raises ValueError.
"""

from __future__ import annotations

MAX_HEAD = 64 * 1024  # bytes of response head before we give up on the server
_MAX_SIZE_LINE = 4096  # a chunk-size line, extensions included
_HEX = b"0123456789abcdefABCDEF"
_SIZE, _DATA, _CRLF, _TRAILER = range(4)


def read_head(buffer: bytes) -> tuple[int, dict[str, str], bytes] | None:
    """Status, headers and the bytes after the head, or None while the head is incomplete."""
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD:
                raise ValueError("the response head is too large")
            return None
        status, headers = parse_head(buffer[:end])
        buffer = buffer[end + 4 :]
        if not 100 <= status < 200:  # 1xx: informational, the real head follows
            return status, headers, buffer


def parse_head(raw: bytes) -> tuple[int, dict[str, str]]:
    """Status and headers (names lower-cased, repeats joined with ", ") of a head without
    its final blank line."""
    status_line, *lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ValueError(f"invalid status line {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise ValueError(f"invalid header line {line[:80]!r}")
        key, value = name.strip().lower(), value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return int(code), headers


class BodyReader:
    """One response body: ``feed`` returns its payload bytes so far; ``done`` turns true
    when the framing says it is complete. A body framed by neither chunks nor a length
    (``ends_at_close``) is complete when the connection closes cleanly."""

    __slots__ = ("_chunks", "_left", "done")

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self._chunks: ChunkedDecoder | None = None
        self._left: int | None = None  # Content-Length still to come
        self.done = status in (204, 304)  # no body, whatever the head says
        if self.done:
            self._left = 0
            return
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._chunks = ChunkedDecoder()
        elif "content-length" in headers:
            length = headers["content-length"]
            if not length.isdigit():
                raise ValueError(f"invalid Content-Length {length[:40]!r}")
            self._left = int(length)
            self.done = not self._left

    @property
    def ends_at_close(self) -> bool:
        return self._chunks is None and self._left is None

    @property
    def at_chunk_boundary(self) -> bool:
        """A chunked body between two whole chunks: the next read starts a size line."""
        return self._chunks is not None and self._chunks.idle

    def feed(self, data: bytes) -> bytes:
        if self._chunks is not None:
            data = self._chunks.feed(data)
            self.done = self._chunks.done
        elif self._left is not None:
            data = data[: self._left]
            self._left -= len(data)
            self.done = not self._left
        return data


class ChunkedDecoder:
    """``Transfer-Encoding: chunked``: ``feed`` returns the payload completed so far and
    ``done`` turns true at the terminating empty chunk (trailer fields are skipped)."""

    __slots__ = ("_buffer", "_left", "_state", "done")

    def __init__(self) -> None:
        self._buffer = b""  # an unfinished size line or CRLF, carried to the next read
        self._left = 0  # bytes of the current chunk's data still to come
        self._state = _SIZE
        self.done = False

    @property
    def idle(self) -> bool:
        """Nothing of a chunk is pending and the body goes on."""
        return self._state == _SIZE and not self._buffer and not self.done

    def feed(self, data: bytes) -> bytes:
        if self._buffer:
            data, self._buffer = self._buffer + data, b""
        elif self._state == _SIZE:  # the usual read: exactly one whole chunk, as a server writes it
            eol = data.find(b"\r\n")
            line = data[:eol]
            if eol > 0 and not line.lstrip(_HEX):
                size = int(line, 16)
                if size and len(data) == eol + size + 4 and data.endswith(b"\r\n"):
                    return data[eol + 2 : -2]
        out: list[bytes] = []
        pos, end = 0, len(data)
        while self._state == _SIZE:  # fast path: whole chunks, as a server writes them
            eol = data.find(b"\r\n", pos)
            line = data[pos:eol] if eol >= 0 else b""
            if not line or line.lstrip(_HEX):
                break  # split, empty, or with extensions: the general path below
            start = eol + 2
            stop = start + int(line, 16)
            if stop == start or data[stop : stop + 2] != b"\r\n":
                break  # the last chunk, or split: the general path below
            out.append(data[start:stop])
            pos = stop + 2
        while pos < end and not self.done:
            state = self._state
            if state == _DATA:
                take = min(self._left, end - pos)
                out.append(data[pos : pos + take])
                pos += take
                self._left -= take
                if not self._left:
                    self._state = _CRLF
            elif state == _CRLF:
                if end - pos < 2:
                    self._buffer = data[pos:]
                    break
                if data[pos : pos + 2] != b"\r\n":
                    raise ValueError("chunk data is not followed by CRLF")
                pos += 2
                self._state = _SIZE
            else:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    if end - pos > _MAX_SIZE_LINE:
                        raise ValueError("chunk size line too long")
                    self._buffer = data[pos:]
                    break
                line, pos = data[pos:eol], eol + 2
                if state == _TRAILER:
                    self.done = not line  # an empty line ends the body
                else:
                    self._left = _chunk_size(line)
                    self._state = _DATA if self._left else _TRAILER
        return out[0] if len(out) == 1 else b"".join(out)


def _chunk_size(line: bytes) -> int:
    digits = line.split(b";", 1)[0].strip()  # drop chunk extensions
    if not digits or digits.lstrip(_HEX):
        raise ValueError(f"invalid chunk size line {line[:40]!r}")
    return int(digits, 16)
