"""Fake vLLM OpenAI-compatible server for benchmarks: raw asyncio Protocol, SSE over chunked HTTP/1.1.

Each SSE event goes out as one HTTP chunk in one transport.write(), the way uvicorn does it. Every
content token carries ``@<time.monotonic_ns()>`` of its send so a client on the same host can measure
per-event relay delay.

Modes:
  --burst        every stream writes as fast as flow control allows;
  --tick-ms T    one global step clock: each active stream gets one token per tick (a decode step).
The first token goes out right after the role chunk (vLLM emits the prefill's token at once), so TTFT
measures the relay, not the phase of the step clock.

A stream stalls after its role chunk (for idle-stream memory tests) with ``--stall`` or when the
request body contains ``[[stall]]`` (e.g. in a message, which any relay forwards). A stalled stream
finishes by itself after ``--stall-max-s``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

MODEL = "bench"
MAX_MODEL_LEN = 131072  # a modern long-context model: streams of any bench length fit (the proxy caps max_tokens here)
VERSION = "0.11.0"
STALL_MARK = b"[[stall]]"
BURST_BATCH = 16  # events written per loop turn per stream in burst mode, for fairness
MAX_HEADER = 64 * 1024

# Token texts as JSON-escaped UTF-8: non-ASCII, quotes and newlines as a tokenizer would produce.
TOKENS: tuple[bytes, ...] = tuple(
    t.encode()
    for t in (
        " Grüße",
        ' \\"quoted\\"',
        "\\n",
        " naïve",
        " 東京",
        " café",
        " the",
        " señor",
        " \\\\path",
        " tab\\t",
        " ünïcödé",
        " 42",
    )
)

MODELS_BODY = orjson.dumps(
    {
        "object": "list",
        "data": [
            {
                "id": MODEL,
                "object": "model",
                "created": int(time.time()),
                "owned_by": "vllm",
                "root": MODEL,
                "parent": None,
                "max_model_len": MAX_MODEL_LEN,
                "permission": [],
            }
        ],
    }
)


@dataclass
class Config:
    tick_ms: float | None  # None = burst
    stall: bool = False
    stall_max_s: float = 60.0


@dataclass
class Stats:
    active: int = 0
    peak_active: int = 0  # most streams open at once since the start or the last /bench/reset-peak
    streams: int = 0
    completed: int = 0
    aborted: int = 0  # client went away before the stream finished
    requests: int = 0
    connections: int = 0
    open_connections: int = 0

    def as_json(self) -> bytes:
        return orjson.dumps(self.__dict__)


_ids = itertools.count(1)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _response(status: str, body: bytes, ctype: bytes = b"application/json", close: bool = False) -> bytes:
    conn = b"connection: close\r\n" if close else b""
    return (
        b"HTTP/1.1 %b\r\nserver: fake-vllm\r\ncontent-type: %b\r\ncontent-length: %d\r\n%b\r\n"
        % (status.encode(), ctype, len(body), conn)
        + body
    )


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nserver: fake-vllm\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)


@dataclass
class Stream:
    """One streaming response; `proto` owns the connection."""

    proto: HttpProtocol
    chat: bool
    tokens: int
    usage: bool
    prefix: bytes
    suffix: bytes
    head: bytes  # id/created/model part shared by role/finish/usage chunks
    sent: int = 0
    done: bool = False
    stall_handle: asyncio.TimerHandle | None = None
    tok_iter: Any = field(default_factory=lambda: itertools.cycle(TOKENS))

    def write_event(self, payload: bytes) -> None:
        self.proto.transport.write(_chunk(b"data: " + payload + b"\n\n"))

    def send_token(self) -> bool:
        """Send the next token; returns True once the stream is finished."""
        if self.done or self.proto.closed:
            return True
        tok = next(self.tok_iter)
        self.write_event(self.prefix + tok + b"@%d" % time.monotonic_ns() + self.suffix)
        self.sent += 1
        if self.sent >= self.tokens:
            self.finish()
            return True
        return False

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        if self.stall_handle is not None:
            self.stall_handle.cancel()
        if self.proto.closed:
            return
        n = self.sent
        if self.chat:
            self.write_event(
                self.head + b',"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"length","stop_reason":null}]}'
            )
        else:
            self.write_event(
                self.head + b',"choices":[{"index":0,"text":"","logprobs":null,"finish_reason":"length","stop_reason":null}]}'
            )
        if self.usage:
            self.write_event(
                self.head + b',"choices":[],"usage":{"prompt_tokens":12,"total_tokens":%d,"completion_tokens":%d}}' % (n + 12, n)
            )
        self.proto.transport.write(_chunk(b"data: [DONE]\n\n"))
        self.proto.transport.write(b"0\r\n\r\n")
        self.proto.stream_finished(self)


class Ticker:
    """The global step clock: every tick, each active stream gets one event."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tick_s: float) -> None:
        self.loop = loop
        self.tick_s = tick_s
        self.streams: list[Stream] = []
        self.handle: asyncio.TimerHandle | None = None
        self.deadline = 0.0

    def add(self, s: Stream) -> None:
        self.streams.append(s)
        if self.handle is None:
            self.deadline = self.loop.time() + self.tick_s
            self.handle = self.loop.call_at(self.deadline, self._tick)

    def _tick(self) -> None:
        self.streams = [s for s in self.streams if not s.send_token()]
        if not self.streams:
            self.handle = None
            return
        # Fixed cadence; a late step is not made up for, as a real engine would not either.
        self.deadline = max(self.deadline + self.tick_s, self.loop.time())
        self.handle = self.loop.call_at(self.deadline, self._tick)


class HttpProtocol(asyncio.Protocol):
    def __init__(self, server: FakeVllm) -> None:
        self.server = server
        self.buf = bytearray()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.closed = False
        self.busy = False  # a response is still being streamed; hold further requests
        self.close_after = False
        self.stream: Stream | None = None
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.stats.connections += 1
        self.server.stats.open_connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.stats.open_connections -= 1
        s = self.stream
        if s is not None and not s.done:
            s.done = True
            if s.stall_handle is not None:
                s.stall_handle.cancel()
            self.server.stats.aborted += 1
            self.server.stats.active -= 1
            self.stream = None

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.stream is not None and self.server.cfg.tick_ms is None and self.stream.stall_handle is None:
            self._pump()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._process()

    def _process(self) -> None:
        while not self.busy and not self.closed:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEADER:
                    self._send(_response("431 Request Header Fields Too Large", b"", close=True))
                    self.transport.close()
                return
            head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            try:
                method, target, _ = head[0].split(" ", 2)
            except ValueError:
                self._send(_response("400 Bad Request", b"", close=True))
                self.transport.close()
                return
            headers = {}
            for line in head[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            start = end + 4
            if headers.get("transfer-encoding", "").lower() == "chunked":
                decoded = _dechunk(self.buf, start)
                if decoded is None:
                    return
                body, consumed = decoded
            else:
                n = int(headers.get("content-length", "0") or 0)
                if len(self.buf) - start < n:
                    return
                body, consumed = bytes(self.buf[start : start + n]), start + n
            del self.buf[:consumed]
            self.close_after = headers.get("connection", "").lower() == "close"
            self.server.stats.requests += 1
            self._dispatch(method, target.split("?", 1)[0], body)

    def _send(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def _reply(self, status: str, body: bytes, ctype: bytes = b"application/json") -> None:
        self._send(_response(status, body, ctype, self.close_after))
        if self.close_after:
            self.transport.close()

    def _dispatch(self, method: str, path: str, body: bytes) -> None:
        if method == "GET":
            if path == "/v1/models":
                return self._reply("200 OK", MODELS_BODY)
            if path == "/version":
                return self._reply("200 OK", b'{"version":"%s"}' % VERSION.encode())
            if path in ("/health", "/ping"):
                return self._reply("200 OK", b"")
            if path == "/load":
                return self._reply("200 OK", b'{"server_load":%d}' % self.server.stats.active)
            if path == "/metrics":
                return self._reply("200 OK", b"", b"text/plain; version=0.0.4")
            if path == "/bench/stats":
                return self._reply("200 OK", self.server.stats.as_json())
            if path == "/bench/reset-peak":
                self.server.stats.peak_active = self.server.stats.active
                return self._reply("200 OK", self.server.stats.as_json())
        elif method == "POST":
            if path in ("/v1/chat/completions", "/v1/completions"):
                return self._completion(path == "/v1/chat/completions", body)
            if path == "/tokenize":
                return self._reply(
                    "200 OK",
                    b'{"count":12,"max_model_len":%d,"tokens":[%s],"token_strs":null}'
                    % (MAX_MODEL_LEN, b",".join(b"%d" % i for i in range(12))),
                )
            if path == "/ping":
                return self._reply("200 OK", b"")
        self._reply("404 Not Found", b'{"detail":"Not Found"}')

    def _completion(self, chat: bool, body: bytes) -> None:
        try:
            req = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            return self._reply("400 Bad Request", _error(f"invalid JSON body: {e}", "BadRequestError", 400))
        if not isinstance(req, dict):
            return self._reply("400 Bad Request", _error("body is not an object", "BadRequestError", 400))
        model = req.get("model", MODEL)
        if model != MODEL:
            return self._reply("404 Not Found", _error(f"The model `{model}` does not exist.", "NotFoundError", 404))
        n = req.get("max_completion_tokens") or req.get("max_tokens") or 16
        if not isinstance(n, int) or n < 1:
            return self._reply("400 Bad Request", _error("max_tokens must be a positive integer", "BadRequestError", 400))
        rid = b"%032x" % next(_ids)
        created = int(time.time())
        if not req.get("stream"):
            return self._reply("200 OK", _non_stream(chat, rid, created, n))
        opts = req.get("stream_options") or {}
        usage = bool(opts.get("include_usage")) if isinstance(opts, dict) else False
        if chat:
            head = b'{"id":"chatcmpl-%b","object":"chat.completion.chunk","created":%d,"model":"%b"' % (
                rid,
                created,
                MODEL.encode(),
            )
            prefix = head + b',"choices":[{"index":0,"delta":{"content":"'
            suffix = b'"},"logprobs":null,"finish_reason":null,"token_ids":null}],"usage":null}'
        else:
            head = b'{"id":"cmpl-%b","object":"text_completion","created":%d,"model":"%b"' % (rid, created, MODEL.encode())
            prefix = head + b',"choices":[{"index":0,"text":"'
            suffix = b'","logprobs":null,"finish_reason":null,"stop_reason":null,"token_ids":null}],"usage":null}'
        s = Stream(self, chat, n, usage, prefix, suffix, head)
        self.stream = s
        self.busy = True
        st = self.server.stats
        st.active += 1
        st.peak_active = max(st.peak_active, st.active)
        st.streams += 1
        self._send(STREAM_HEAD)
        if chat:
            s.write_event(
                head + b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}'
            )
        cfg = self.server.cfg
        if cfg.stall or STALL_MARK in body:
            s.stall_handle = self.server.loop.call_later(cfg.stall_max_s, self._unstall)
            return
        if s.send_token():
            return
        if cfg.tick_ms is None:
            self._pump()
        else:
            self.server.ticker.add(s)  # type: ignore[union-attr]

    def _unstall(self) -> None:
        s = self.stream
        if s is None or s.done:
            return
        s.stall_handle = None
        if self.server.cfg.tick_ms is None:
            self._pump()
        else:
            self.server.ticker.add(s)  # type: ignore[union-attr]

    def _pump(self) -> None:
        s = self.stream
        if s is None or s.done or self.closed:
            return
        for _ in range(BURST_BATCH):
            if self.paused:
                return  # resume_writing() calls us again
            if s.send_token():
                return
        self.server.loop.call_soon(self._pump)

    def stream_finished(self, s: Stream) -> None:
        st = self.server.stats
        st.active -= 1
        st.completed += 1
        self.stream = None
        self.busy = False
        if self.close_after:
            self.transport.close()
        elif self.buf:
            self.server.loop.call_soon(self._process)


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    out = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        start = eol + 2
        if size == 0:
            end = buf.find(b"\r\n\r\n", eol)  # skip (rare) trailers
            return (bytes(out), end + 4) if end >= 0 else None
        if len(buf) < start + size + 2:
            return None
        out += buf[start : start + size]
        pos = start + size + 2


def _error(msg: str, typ: str, code: int) -> bytes:
    return orjson.dumps({"error": {"message": msg, "type": typ, "param": None, "code": code}})


def _non_stream(chat: bool, rid: bytes, created: int, n: int) -> bytes:
    text = "".join(orjson.loads(b'"' + t + b'"') for t, _ in zip(itertools.cycle(TOKENS), range(n)))
    usage = {"prompt_tokens": 12, "total_tokens": 12 + n, "completion_tokens": n}
    if chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "tool_calls": []},
            "logprobs": None,
            "finish_reason": "length",
            "stop_reason": None,
        }
        return orjson.dumps(
            {
                "id": "chatcmpl-" + rid.decode(),
                "object": "chat.completion",
                "created": created,
                "model": MODEL,
                "choices": [choice],
                "usage": usage,
            }
        )
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length", "stop_reason": None}
    return orjson.dumps(
        {
            "id": "cmpl-" + rid.decode(),
            "object": "text_completion",
            "created": created,
            "model": MODEL,
            "choices": [choice],
            "usage": usage,
        }
    )


class FakeVllm:
    def __init__(self, cfg: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        self.loop = loop
        self.stats = Stats()
        self.ticker = Ticker(loop, cfg.tick_ms / 1000) if cfg.tick_ms else None

    def protocol(self) -> HttpProtocol:
        return HttpProtocol(self)


async def serve(host: str, port: int, cfg: Config, ready: Callable[[int], None] | None = None) -> None:
    loop = asyncio.get_running_loop()
    fake = FakeVllm(cfg, loop)
    server = await loop.create_server(fake.protocol, host, port, backlog=4096, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    if ready is not None:
        ready(bound)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def install_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed on stdout)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--burst", action="store_true", help="write as fast as flow control allows (default)")
    mode.add_argument("--tick-ms", type=float, help="global step clock period in ms")
    p.add_argument("--stall", action="store_true", help="every stream stalls after its role chunk")
    p.add_argument("--stall-max-s", type=float, default=60.0, help="a stalled stream resumes after this")
    p.add_argument("--no-uvloop", action="store_true")
    a = p.parse_args(argv)
    if not a.no_uvloop:
        install_uvloop()
    cfg = Config(tick_ms=a.tick_ms if a.tick_ms and a.tick_ms > 0 else None, stall=a.stall, stall_max_s=a.stall_max_s)

    def ready(port: int) -> None:
        print(f"fake-vllm listening on {a.host}:{port}", flush=True)

    asyncio.run(serve(a.host, a.port, cfg, ready))


if __name__ == "__main__":
    main()
