"""The proxy's one HTTP/1.1 client for vLLM: every request (token streams, JSON posts,
control-plane GETs) is spoken by a small ``asyncio.Protocol`` that hands body bytes to a
sink from ``data_received`` (no Task wakeup per read; ``fastrelay`` relies on that).
Connections are kept alive and reused through ``h1pool``; ``https://`` backends are spoken
over TLS (the system's CA store, or the backend's ``ca_file``).

Every read is bounded: ``timeouts.first_byte`` until the response head, and then
``timeouts.idle`` between body bytes (until the first body byte, whichever of the two
ends later, since vLLM may send its head before prefill). Broken framing, a connection
that drops mid-body and a silent backend all end the body with an ``errors.*``; nothing
waits for ever. aiohttp's client is not used here: with aiohttp 3.14 a bad chunk size
after the head leaves its payload reader waiting even after the server closes.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ssl
from collections.abc import Callable
from typing import Any, Protocol, cast
from urllib.parse import unquote, urlsplit

import orjson

from proxy import __version__, errors, native
from proxy.config import BackendConfig, Timeouts
from proxy.errors import (
    BackendTimeout,
    BackendUnavailable,
    ProxyError,
    bad_stream,
    no_first_byte,
    parse_backend_error,
    unreachable,
)
from proxy.h1pool import Key, Pool
from proxy.http1 import BodyReader, read_head

_MAX_ERROR_BODY = 1024 * 1024  # an error body is kept up to this size


class Sink(Protocol):
    def body(self, data: bytes) -> None: ...

    def end(self, error: ProxyError | None) -> None: ...


class UpstreamStream(native.Stream, asyncio.Protocol):
    """One request to vLLM. ``head`` resolves when a response head with status < 400
    arrived; an error status fails it with the ``parse_backend_error`` of the whole body.
    Body bytes go to the attached sink and are held until it is attached. A complete
    response framed by length or chunks leaves its connection to ``pool``.

    Reads arrive at ``data_received``: with ``proxy._fast`` built that is C, which relays
    a token stream's text chunks itself once ``arm_relay`` armed it and hands every other
    read to ``_data_received`` (see proxy/_fast.c); without it, ``_data_received`` is it."""

    def __init__(
        self, backend: BackendConfig, timeouts: Timeouts | None = None, pool: Pool | None = None, key: Key | None = None
    ) -> None:
        self.backend = backend
        self.timeouts = timeouts or Timeouts()
        self.pool, self.key = pool, key
        self.received = False  # any byte of the response arrived
        self.on_close: Callable[[tuple[ProxyError | None] | None], None] | None = None  # once, by close(): ``_end``
        self._reuse = False  # the connection may serve another request once this one is complete
        self._lost = False
        self._loop = asyncio.get_running_loop()
        self.head: asyncio.Future[int] = self._loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.complete = False  # the whole response arrived
        self._buffer = b""  # the response head so far
        self._status = 0
        self._body: BodyReader | None = None  # set once the head arrived
        self._error_body: bytearray | None = None  # status >= 400: the body, for the error message
        self._sink: Sink | None = None
        self._held: list[bytes] = []
        self._end: tuple[ProxyError | None] | None = None  # how the body ended: (None,) complete, (error,); None: not yet
        self._last = 0.0  # loop time of the last body read (0: none yet)
        self._quiet_until = 0.0  # before the first body byte: the deadline for it
        self._quiet_for = 0.0  # ... and how long after the head that is
        self._paused = False  # paused by the consumer: silence is ours, not the backend's
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def _data_received(self, data: bytes) -> None:
        if self._body is not None:
            self._last = self._loop.time()
            self._feed(self._body, data)
            return
        self.received = True
        self._buffer += data
        try:
            head = read_head(self._buffer)
            if head is None:
                return
            self._status, headers, rest = head
            body = self._body = BodyReader(self._status, headers)
        except ValueError as exc:
            self._bad(str(exc))
            return
        self._buffer = b""
        keep = "close" not in headers.get("connection", "").lower()
        self._reuse = self.pool is not None and keep and not body.ends_at_close
        if self._status >= 400:
            self._error_body = bytearray()
        elif not self.head.done():  # not when open_stream already gave up (timeout, cancelled)
            self.head.set_result(self._status)
        if rest:
            self._last = self._loop.time()
        self._feed(body, rest)

    if not native.BUILT:
        data_received = _data_received

    def arm_relay(
        self,
        client: asyncio.WriteTransport,
        high: int,
        on_backlog: Callable[[], None],
        created_at: Callable[[], str],
        line: tuple[bytes, bytes, tuple[bytes, bytes, bytes, bytes], bytes],
        chunked: bool,
    ) -> None:
        """Let the C read path write the next text chunks to ``client`` (``line``: the
        translator's ``fast_line``), if the body is at a chunk boundary and nothing has
        ended or paused it; any later read that is not one such chunk comes here as before."""
        body = self._body
        if body is None or not body.at_chunk_boundary or self._paused or self.transport is None:
            return
        if self._end is not None or self.complete or self._error_body is not None:
            return
        prefix, suffix, parts, model_json = line
        self.arm(
            self._loop.time,
            client.write,
            client.is_closing,
            client.get_write_buffer_size,
            high,
            on_backlog,
            created_at,
            prefix,
            suffix,
            parts,
            model_json,
            chunked,
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._stop_timer()
        if self.complete:
            return
        if self._error_body is not None or (self._body is not None and self._body.ends_at_close and exc is None):
            self._complete()  # the body ended with the connection (an error body may be cut short)
        elif not self.head.done():
            self.head.set_exception(self.unreachable(str(exc or "the server closed the connection without answering")))
        else:
            self._ended(BackendUnavailable(f"the vLLM stream broke off: {exc or 'the connection closed early'}"))

    def attach(self, sink: Sink) -> None:
        self._sink = sink
        held, self._held = self._held, []
        for data in held:
            sink.body(data)
        if self._end is not None:
            sink.end(self._end[0])

    def watch(self, first_byte_deadline: float) -> None:
        """Bound the body's reads from now on (see the module docstring)."""
        now = self._loop.time()
        self._quiet_until = max(first_byte_deadline, now + self.timeouts.idle)
        self._quiet_for = self._quiet_until - now
        if not self.complete and self._end is None:
            self._timer = self._loop.call_at(self._deadline(), self._check)

    def pause_reading(self) -> None:
        self.disarm()
        self._paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        self._paused = False
        if self._last:
            self._last = self._loop.time()
        if self.transport is not None:
            self.transport.resume_reading()

    def close(self) -> None:
        """Done with the stream: an unfinished one is dropped, which makes vLLM abort it."""
        self.disarm()
        self._stop_timer()
        if self.on_close is not None:
            done, self.on_close = self.on_close, None
            done(self._end)
        if self.transport is not None:
            if self.complete:
                self.transport.close()
            else:
                self.transport.abort()

    def _deadline(self) -> float:
        return self._last + self.timeouts.idle if self._last else self._quiet_until

    def _check(self) -> None:
        self._timer = None
        if self.complete or self._end is not None:
            return
        now = self._loop.time()
        if self._paused:
            self._timer = self._loop.call_at(now + self.timeouts.idle, self._check)
            return
        deadline = self._deadline()
        if now < deadline:
            self._timer = self._loop.call_at(deadline, self._check)
            return
        if self.transport is not None:
            self.transport.abort()
        name = f"vLLM backend {self.backend.name} ({self.backend.public_url})"
        if self._last:
            self._ended(BackendTimeout(f"{name} sent nothing for {self.timeouts.idle:g} s mid-reply"))
        else:
            self._ended(BackendTimeout(f"{name} sent its response head but no body within {round(self._quiet_for, 1):g} s"))

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _feed(self, body: BodyReader, data: bytes) -> None:
        try:
            data = body.feed(data)
        except ValueError as exc:
            self._bad(str(exc))
            return
        if self.armed and not body.at_chunk_boundary:
            self.disarm()  # C reads whole chunks only: the rest of this one comes here
        if data:
            if self._error_body is not None:
                self._error_body += data[: _MAX_ERROR_BODY - len(self._error_body)]
            elif self._sink is not None:
                self._sink.body(data)
            else:
                self._held.append(data)
        if body.done:
            self._complete()

    def _complete(self) -> None:
        self.disarm()
        self.complete = True
        self._stop_timer()
        transport, self.transport = self.transport, None
        if transport is not None and self._reuse and not self._lost and self.pool is not None and self.key:
            if self._paused:
                transport.resume_reading()
            self.pool.put(self.key, transport)
        elif transport is not None:
            transport.close()
        if self._error_body is None:
            self._ended(None)
        elif not self.head.done():
            self.head.set_exception(parse_backend_error(self._status, bytes(self._error_body), self.backend.name))

    def _ended(self, error: ProxyError | None) -> None:
        self.disarm()
        if self._end is None:  # the first reason counts (a malformed body, then its connection's loss)
            self._end = (error,)
            self._stop_timer()
            if self._sink is not None:
                self._sink.end(error)

    def _bad(self, reason: str) -> None:
        message = f"vLLM backend {self.backend.name} sent a malformed HTTP response: {reason}"
        if self.transport is not None:
            self.transport.abort()
        if not self.head.done():
            self.head.set_exception(bad_stream(message))
        elif not self.complete:
            self._ended(bad_stream(f"the vLLM stream broke off: {message}"))

    def unreachable(self, reason: str) -> BackendUnavailable:
        return unreachable(self.backend.name, self.backend.url, reason)


async def open_stream(
    timeouts: Timeouts,
    backend: BackendConfig,
    path: str,
    body: Any,
    request_id: str = "",
    *,
    method: str = "POST",
    pool: Pool | None = None,
) -> UpstreamStream:
    """Send the request (``body`` as JSON; None: no body) and return once a response head
    with status < 400 arrived; an error status raises ``parse_backend_error``, timeouts and
    connection failures the ``errors.*`` that name the backend. With a ``pool`` an idle
    connection is reused; if the server had closed it, which shows before any response
    byte, the request is sent once more on a fresh connection. The caller must attach a
    sink and ``close()`` the stream."""
    url = urlsplit(f"{backend.url}{path}")
    tls = url.scheme == "https"
    host, port = url.hostname or "", url.port or (443 if tls else 80)
    key: Key = (url.scheme, host, port, backend.ca_file)
    data = b"" if body is None else orjson.dumps(body)
    target = f"{url.path or '/'}?{url.query}" if url.query else url.path or "/"
    head = _request_head(method, target, url.netloc, backend, data if body is not None else None, request_id, pool is not None)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeouts.first_byte
    stream: UpstreamStream | None = None
    try:
        async with asyncio.timeout(timeouts.first_byte):
            reused = pool.take(key) if pool is not None else None
            while True:
                stream = UpstreamStream(backend, timeouts, pool, key)
                if reused is not None:
                    reused.set_protocol(stream)
                    stream.connection_made(reused)
                else:
                    await _connect(loop, stream, host, port, backend.ca_file if tls else None, timeouts)
                assert stream.transport is not None
                stream.transport.write(head + data if len(data) < 65536 else head)
                if len(data) >= 65536:
                    stream.transport.write(data)
                try:
                    await stream.head
                    break
                except BackendUnavailable:
                    if reused is None or stream.received:
                        raise
                    stream.close()  # the server closed the idle connection: once more, fresh
                    reused = None
    except TimeoutError:
        if stream is not None:
            stream.close()
        raise no_first_byte(backend.name, backend.url, timeouts.first_byte) from None
    except BaseException:
        if stream is not None:
            stream.close()
        raise
    stream.watch(deadline)
    return stream


async def _connect(
    loop: asyncio.AbstractEventLoop, stream: UpstreamStream, host: str, port: int, ca_file: str | None, timeouts: Timeouts
) -> None:
    """A fresh connection for ``stream`` (TLS when ``ca_file`` is not None; "" is the
    system's CA store)."""
    backend = stream.backend
    try:
        async with asyncio.timeout(timeouts.connect):
            context = None if ca_file is None else _tls(ca_file)
            await loop.create_connection(lambda: stream, host, port, ssl=context)
    except TimeoutError:
        raise errors.ConnectTimeout(
            f"vLLM backend {backend.name} ({backend.public_url}) did not accept a connection within {timeouts.connect:g} s"
        ) from None
    except ssl.SSLError as exc:
        raise stream.unreachable(f"TLS handshake failed: {exc.reason or exc}") from None
    except OSError as exc:
        raise stream.unreachable(exc.strerror or str(exc) or type(exc).__name__) from None


def _request_head(
    method: str, target: str, netloc: str, backend: BackendConfig, data: bytes | None, request_id: str, keep: bool
) -> bytes:
    """The request head; the one place a backend's credentials are sent (the api_key as a
    bearer token, else the URL's user:password as Basic auth)."""
    userinfo, _, hostport = netloc.rpartition("@")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {hostport}", "Accept: */*", f"User-Agent: ollama-vllm-proxy/{__version__}"]
    if data is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    if not keep:
        lines.append("Connection: close")
    if backend.api_key:
        lines.append(f"Authorization: Bearer {backend.api_key}")
    elif userinfo:  # credentials in the backend URL, as aiohttp would send them
        user, _, password = userinfo.partition(":")
        lines.append("Authorization: Basic " + base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode())
    if request_id:
        lines.append(f"X-Request-Id: {request_id}")
    return "\r\n".join(line.replace("\r", "").replace("\n", "") for line in lines).encode() + b"\r\n\r\n"


@functools.cache
def _tls(ca_file: str) -> ssl.SSLContext:
    """Loading a CA store takes milliseconds: once per process and file."""
    return ssl.create_default_context(cafile=ca_file or None)
