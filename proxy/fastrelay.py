"""The streaming hot path of ``/api/chat`` and ``/api/generate`` (``stream: true``).

vLLM's SSE in, Ollama NDJSON out, without a Task wakeup per event (performance.md B4,
variant (p), and design consequence 4). Each stream gets its own HTTP/1.1 connection,
spoken by a small ``asyncio.Protocol``. Its ``data_received`` dechunks each read, decodes
the SSE events, translates them and writes every resulting line to the client's
transport as ONE HTTP chunk. The handler coroutine (``relay``) wakes only for what has to
be awaited: the response head, the first client byte (``StreamResponse.prepare``), client
backpressure, and the end of the stream.

The semantics are those of Ollama's streams (ollama-api.md §1.3). Errors before the first client
byte propagate, so the client gets a real status. After that byte, the client gets the
lines translated so far and then one ``{"error"}`` line. Body chunks go out raw on the
client's transport, framed as HTTP chunks. The terminator always comes from aiohttp's own
``write_eof``: aiohttp calls it anyway when the handler returns, so writing
``0\\r\\n\\r\\n`` here as well would end the body twice.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ssl
import time
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import orjson
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import StreamWriter

from proxy import __version__
from proxy.clock import Clock
from proxy.config import BackendConfig, Timeouts
from proxy.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    ProxyError,
    no_first_byte,
    parse_backend_error,
    unreachable,
)
from proxy.http1 import BodyReader, read_head
from proxy.sse import DONE, SSEDecoder
from proxy.state import CONTEXT
from proxy.streaming import NDJSON, record_outcome
from proxy.translate.stream import StreamTranslator

_LINE = orjson.OPT_APPEND_NEWLINE
_MAX_ERROR_BODY = 1024 * 1024  # an error body is kept up to this size


class _Relay:
    """The body's consumer, called from the upstream's ``data_received``: SSE events →
    translator → one write to the client per read. It wakes the handler coroutine only
    through ``_wake``."""

    def __init__(self, upstream: UpstreamStream, translator: StreamTranslator, clock: Clock) -> None:
        self.upstream = upstream
        self.translator = translator
        self.clock = clock
        self.sse = SSEDecoder()
        self.out: list[dict[str, Any]] = []  # translated, not written yet (before the first byte, at the end)
        self.error: BaseException | None = None  # what ended the stream early
        self.ended = False  # the upstream body is complete
        self.gone = False  # the client went away
        self.backlogged = False  # the client's write buffer is over its high-water mark: upstream paused
        self.client: asyncio.WriteTransport | None = None  # set once the response head is out
        self.writer: AbstractStreamWriter | None = None
        self.chunked = True
        self.high = 0  # the client transport's high-water mark
        self._waiter: asyncio.Future[None] | None = None

    def body(self, data: bytes) -> None:
        if self.error is not None or self.gone:
            return
        now, created = time.monotonic_ns(), self.clock.created_at()
        out = self.out
        try:
            for event in self.sse.feed(data):
                if event != DONE:
                    out += self.translator.feed(event, created, now)
        except Exception as exc:  # noqa: BLE001 - re-raised by the handler coroutine
            self.fail(exc)
            return
        if not out:
            return
        if self.client is None:
            self._wake()  # the first client byte: only the coroutine can prepare the response
            return
        self.out = []
        self.write(out)

    def write(self, objects: list[dict[str, Any]]) -> None:
        client = self.client
        assert client is not None
        if client.is_closing():
            self.gone = True
            self.upstream.close()  # vLLM aborts the generation
            self._wake()
            return
        data = b"".join([orjson.dumps(o, option=_LINE) for o in objects])
        client.write(b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)
        if not self.backlogged and client.get_write_buffer_size() > self.high:
            self.backlogged = True
            self.upstream.pause_reading()
            self._wake()

    def end(self, error: ProxyError | None) -> None:
        if error is not None:
            self.fail(error)
        elif self.error is None:
            self.ended = True
            self._wake()

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
            self.upstream.close()
            self._wake()

    def start(self, writer: AbstractStreamWriter) -> None:
        """The response head is out: write what waited for it; from now on every read is
        written from ``body``."""
        assert isinstance(writer, StreamWriter) and writer.transport is not None
        self.client, self.writer, self.chunked = writer.transport, writer, writer.chunked
        self.high = self.client.get_write_buffer_limits()[1]
        out, self.out = self.out, []
        self.write(out)

    async def drained(self) -> None:
        """Wait until the client took enough of its backlog, then read upstream again."""
        client, writer = self.client, self.writer
        assert client is not None and writer is not None
        low = client.get_write_buffer_limits()[0]
        try:
            while client.get_write_buffer_size() > low and not client.is_closing():
                await writer.drain()  # returns once the transport resumes aiohttp's paused protocol
                if client.get_write_buffer_size() > low:
                    await asyncio.sleep(0.005)  # the protocol was not paused: poll
        except ConnectionResetError:
            pass
        if client.is_closing():
            self.gone = True
            return
        self.backlogged = False
        self.upstream.resume_reading()

    async def wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class UpstreamStream(asyncio.Protocol):
    """One streaming POST to vLLM on a connection of its own. ``head`` resolves when a
    response head with status < 400 arrived; an error status fails it with the
    ``parse_backend_error`` of the whole body. Body bytes go to the attached ``_Relay``
    and are held until it is attached."""

    def __init__(self, backend: BackendConfig) -> None:
        self.backend = backend
        self.head: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.complete = False  # the whole response arrived
        self._buffer = b""  # the response head so far
        self._status = 0
        self._body: BodyReader | None = None  # set once the head arrived
        self._error_body: bytearray | None = None  # status >= 400: the body, for the error message
        self._sink: _Relay | None = None
        self._held: list[bytes] = []
        self._end: tuple[ProxyError | None] | None = None  # how the body ended (error or None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        if self._body is not None:
            self._feed(self._body, data)
            return
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
        if self._status >= 400:
            self._error_body = bytearray()
        elif not self.head.done():  # not when open_stream already gave up (timeout, cancelled)
            self.head.set_result(self._status)
        self._feed(body, rest)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.complete:
            return
        if self._error_body is not None or (self._body is not None and self._body.ends_at_close and exc is None):
            self._complete()  # the body ended with the connection (an error body may be cut short)
        elif not self.head.done():
            self.head.set_exception(self.unreachable(str(exc or "the server closed the connection without answering")))
        else:
            self._ended(BackendUnavailable(f"the vLLM stream broke off: {exc or 'the connection closed early'}"))

    def attach(self, sink: _Relay) -> None:
        self._sink = sink
        held, self._held = self._held, []
        for data in held:
            sink.body(data)
        if self._end is not None:
            sink.end(self._end[0])

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def close(self) -> None:
        """Done with the stream: an unfinished one is dropped, which makes vLLM abort it."""
        if self.transport is not None:
            if self.complete:
                self.transport.close()
            else:
                self.transport.abort()

    def _feed(self, body: BodyReader, data: bytes) -> None:
        try:
            data = body.feed(data)
        except ValueError as exc:
            self._bad(str(exc))
            return
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
        self.complete = True
        if self.transport is not None:
            self.transport.close()  # one request per connection
        if self._error_body is None:
            self._ended(None)
        elif not self.head.done():
            self.head.set_exception(parse_backend_error(self._status, bytes(self._error_body), self.backend.name))

    def _ended(self, error: ProxyError | None) -> None:
        if self._end is None:  # the first reason counts (a malformed body, then its connection's loss)
            self._end = (error,)
            if self._sink is not None:
                self._sink.end(error)

    def _bad(self, reason: str) -> None:
        message = f"vLLM backend {self.backend.name} sent a malformed HTTP response: {reason}"
        if self.transport is not None:
            self.transport.abort()
        if not self.head.done():
            self.head.set_exception(BackendError(message, 502))
        elif not self.complete:
            self._ended(BackendUnavailable(f"the vLLM stream broke off: {message}"))

    def unreachable(self, reason: str) -> BackendUnavailable:
        return unreachable(self.backend.name, self.backend.url, reason)


async def open_stream(timeouts: Timeouts, backend: BackendConfig, path: str, body: Any, request_id: str = "") -> UpstreamStream:
    """POST ``body`` to the backend and return once a response head with status < 400
    arrived. Timeouts and errors raise the ``errors.*`` that ``backend.Upstream.post``
    raises. The caller must ``relay`` the stream or ``close()`` it."""
    url = urlsplit(f"{backend.url}{path}")
    tls = url.scheme == "https"
    host, port = url.hostname or "", url.port or (443 if tls else 80)
    loop = asyncio.get_running_loop()
    stream = UpstreamStream(backend)
    try:
        async with asyncio.timeout(timeouts.first_byte):
            try:
                async with asyncio.timeout(timeouts.connect):
                    await loop.create_connection(lambda: stream, host, port, ssl=_tls() if tls else None)
            except TimeoutError:
                raise BackendTimeout(
                    f"vLLM backend {backend.name} ({backend.public_url}) did not accept a connection "
                    f"within {timeouts.connect:g} s"
                ) from None
            except OSError as exc:
                raise stream.unreachable(exc.strerror or str(exc) or type(exc).__name__) from None
            assert stream.transport is not None
            data = orjson.dumps(body)
            stream.transport.write(_request_head(url.path or "/", url.query, url.netloc, backend, len(data), request_id))
            stream.transport.write(data)
            await stream.head
    except TimeoutError:
        stream.close()
        raise no_first_byte(backend.name, backend.url, timeouts.first_byte) from None
    except BaseException:
        stream.close()
        raise
    return stream


def _request_head(path: str, query: str, netloc: str, backend: BackendConfig, length: int, request_id: str) -> bytes:
    userinfo, _, hostport = netloc.rpartition("@")
    target = f"{path}?{query}" if query else path
    lines = [f"POST {target} HTTP/1.1", f"Host: {hostport}", "Accept: */*", f"User-Agent: ollama-vllm-proxy/{__version__}",
             "Content-Type: application/json", f"Content-Length: {length}", "Connection: close"]  # fmt: skip
    if backend.api_key:
        lines.append(f"Authorization: Bearer {backend.api_key}")
    elif userinfo:  # credentials in the backend URL, as aiohttp would send them
        user, _, password = userinfo.partition(":")
        lines.append("Authorization: Basic " + base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode())
    if request_id:
        lines.append(f"X-Request-Id: {request_id}")
    return "\r\n".join(line.replace("\r", "").replace("\n", "") for line in lines).encode() + b"\r\n\r\n"


@functools.cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()  # loading the CA store takes milliseconds: once per process


async def relay(request: web.Request, upstream: UpstreamStream, translator: StreamTranslator, clock: Clock) -> web.StreamResponse:
    """Relay one opened vLLM stream to the client as Ollama NDJSON. The upstream is
    always closed on the way out, so a client that hangs up (or a cancelled handler)
    aborts the generation in vLLM."""
    log = request[CONTEXT].log
    sink = _Relay(upstream, translator, clock)
    response: web.StreamResponse | None = None
    try:
        upstream.attach(sink)
        while True:
            if sink.gone:
                log["client_gone"] = True  # the middleware logs 499
                assert response is not None
                return response
            if sink.error is not None or sink.ended:
                return await _finish(request, response, sink, log, clock)
            if sink.client is None and sink.out:
                response, writer = await _prepare(request)
                sink.start(writer)
            elif sink.backlogged:
                await sink.drained()
            else:
                await sink.wait()
    finally:
        upstream.close()


async def _finish(
    request: web.Request, response: web.StreamResponse | None, sink: _Relay, log: dict[str, Any], clock: Clock
) -> web.StreamResponse:
    translator, out = sink.translator, sink.out
    try:
        if sink.error is not None:
            raise sink.error
        now, created = time.monotonic_ns(), clock.created_at()
        for event in sink.sse.close():
            if event != DONE:
                out += translator.feed(event, created, now)
        out.append(translator.finish(created, now))
    except ProxyError as exc:
        record_outcome(log, translator)
        log["error"] = exc.message
        if response is None and not out:
            raise  # nothing sent yet: a real status and {"error"} (ollama-api.md §1.3)
        response = response or (await _prepare(request))[0]
        # What arrived before the error is still delivered, then one error line.
        await response.write_eof(_lines(out) + orjson.dumps({"error": exc.message}, option=_LINE))
        return response
    record_outcome(log, translator)
    response = response or (await _prepare(request))[0]
    await response.write_eof(_lines(out))
    return response


async def _prepare(request: web.Request) -> tuple[web.StreamResponse, AbstractStreamWriter]:
    response = web.StreamResponse(status=200, headers={"Content-Type": NDJSON})
    writer = await response.prepare(request)
    assert writer is not None
    return response, writer


def _lines(objects: list[dict[str, Any]]) -> bytes:
    return b"".join([orjson.dumps(o, option=_LINE) for o in objects])
