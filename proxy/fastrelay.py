"""The streaming hot path of ``/api/chat`` and ``/api/generate`` (``stream: true``).

vLLM's SSE in, Ollama NDJSON out, without a Task wakeup per event. Each stream gets its
HTTP/1.1 connection (``h1client``, opened by a ``Backend``), whose ``data_received`` dechunks each read and
hands it to ``_Relay.body``: the ``Encoder`` turns it into NDJSON lines, written to the
client's transport as ONE HTTP chunk. The handler coroutine (``relay``) wakes only for what has to
be awaited: the response head, the first client byte (``StreamResponse.prepare``), client
backpressure, and the end of the stream.

The semantics are those of Ollama's streams (Ollama's server/routes.go streams its
errors as a final ``{"error"}`` object). Errors before the first client byte propagate,
so the client gets a real status. After that byte, the client gets the lines translated
so far, and the middleware ends the body with one ``{"error"}`` line. Body chunks go out
raw on the client's transport (the aiohttp internals this needs are in ``aiohttp_raw``);
the terminator always comes from aiohttp's own ``write_eof``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from proxy import native
from proxy.aiohttp_raw import HeldHeadResponse, raw_channel
from proxy.backend import UpstreamStream
from proxy.clock import Clock
from proxy.encoder import Encoder
from proxy.state import CONTEXT
from proxy.streaming import NDJSON, record_outcome
from proxy.translate.stream import StreamTranslator


class _Relay:
    """The body's consumer, called from the upstream's ``data_received``: SSE bytes →
    ``Encoder`` → one write to the client per read. It wakes the handler coroutine only
    through ``_wake``."""

    def __init__(self, upstream: UpstreamStream, encoder: Encoder) -> None:
        self.upstream = upstream
        self.encoder = encoder
        self.out: list[bytes] = []  # encoded, not written yet (before the first byte)
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
        try:
            data = self.encoder.feed(data, time.monotonic_ns())
        except Exception as exc:  # noqa: BLE001 - re-raised by the handler coroutine
            self.fail(exc)
            data = self.encoder.salvage()
            if data:
                self.out.append(data)  # written ahead of the error line
            return
        if self.upstream.armed and not self.encoder.sse.idle:
            self.upstream.disarm()  # the C read path takes whole events only
        if not data:
            return
        if self.client is None:
            self.out.append(data)
            self._wake()  # the first client byte: only the coroutine can prepare the response
            return
        self.write(data)
        self._arm()

    def write(self, data: bytes, head: bytes = b"") -> None:
        client = self.client
        assert client is not None
        if client.is_closing():
            self.gone = True
            self.upstream.close()  # vLLM aborts the generation
            self._wake()
            return
        client.write(head + (b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data))
        if not self.backlogged and client.get_write_buffer_size() > self.high:
            self._backlog()

    def _backlog(self) -> None:
        self.backlogged = True
        self.upstream.pause_reading()
        self._wake()

    def _arm(self) -> None:
        """Hand the next text chunks to the C read path (``UpstreamStream.arm_relay``),
        unless it already has them or this stream is not in its steady state."""
        upstream = self.upstream
        if not native.BUILT or upstream.armed or self.backlogged or self.gone or self.error is not None or self.client is None:
            return  # (without the C module: no work per read at all)
        line = self.encoder.fast_line()
        if line is not None:
            upstream.arm_relay(self.client, self.high, self._backlog, self.encoder.created_at, line, self.chunked)

    def end(self, error: BaseException | None) -> None:
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
        """The response is prepared: write its head with what waited for it, in one write;
        from now on every read is written from ``body`` (or by the C read path)."""
        client, chunked, head = raw_channel(writer)
        self.writer = writer
        self.begin(client, chunked, head)

    def begin(self, client: asyncio.WriteTransport, chunked: bool, head: bytes = b"") -> None:
        """``start`` on the client's transport itself (tests drive the relay from here)."""
        self.client, self.chunked = client, chunked
        self.high = client.get_write_buffer_limits()[1]
        out, self.out = self.out, []
        self.write(b"".join(out), head)
        self._arm()

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
        self._arm()

    async def wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


async def relay(
    request: web.Request,
    upstream: UpstreamStream,
    translator: StreamTranslator,
    clock: Clock,
    before_final: Callable[[], Awaitable[None]] | None = None,
) -> web.StreamResponse:
    """Relay one opened vLLM stream to the client as Ollama NDJSON. The upstream is
    always closed on the way out, so a client that hangs up (or a cancelled handler)
    aborts the generation in vLLM. Whatever goes wrong after the first client byte is
    raised once the lines translated before it are written: the middleware then ends the
    body with one ``{"error"}`` line (and logs the 200 the client got). ``before_final``
    runs once the upstream body is complete, before the final line is made."""
    context = request[CONTEXT]
    sink = _Relay(upstream, Encoder(translator, clock.created_at))
    try:
        upstream.attach(sink)
        while True:
            if sink.gone:
                context.log["client_gone"] = True  # the middleware logs 499
                assert context.response is not None
                return context.response
            if sink.error is not None or sink.ended:
                break
            if sink.client is None and sink.out:
                sink.start(await _prepare(request))
            elif sink.backlogged:
                await sink.drained()
            else:
                await sink.wait()
        try:
            if sink.error is not None:
                raise sink.error
            sink.encoder.close(time.monotonic_ns())
            if before_final is not None:
                await before_final()
            tail = sink.encoder.finish(time.monotonic_ns())
        except Exception:
            sink.out.append(sink.encoder.salvage())
            raise
        finally:
            record_outcome(context, translator)
        response = context.response
        if response is None:
            await _prepare(request)
            response = context.response
        assert response is not None
        await response.write_eof(b"".join(sink.out) + tail)
        return response
    except Exception:
        pending = b"".join(sink.out)
        if pending and context.response is None:
            await _prepare(request)  # the lines translated before the error are still delivered
        if pending and context.response is not None:
            await context.response.write(pending)
        raise
    finally:
        upstream.close()


async def _prepare(request: web.Request) -> AbstractStreamWriter:
    response = HeldHeadResponse(status=200, headers={"Content-Type": NDJSON})  # the head goes with the first line
    writer = await response.prepare(request)
    assert writer is not None
    request[CONTEXT].response = response
    return writer
