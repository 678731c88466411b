"""The C read path (proxy/_fast.c) writes exactly what the Python path writes.

Each row feeds the same reads (what ``data_received`` gets from vLLM) to an
``UpstreamStream`` + ``fastrelay._Relay`` twice, once with the C path enabled and once
without, and compares what the client's transport received, how the stream ended and the
translator's state. ``relayed`` counts the reads C wrote itself: a row that expects none
shows C leaving that shape to Python; one that expects some shows C took them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import native
from proxy.backend_config import BackendConfig, Timeouts
from proxy.clock import Clock
from proxy.encoder import Encoder
from proxy.fastrelay import _Relay
from proxy.h1client import UpstreamStream
from proxy.translate.chat import ChatStreamTranslator
from proxy.translate.generate import GenerateStreamTranslator
from proxy.translate.stream import StreamTranslator
from tests.unit.test_text_line import chat_chunk, cmpl_chunk

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
ROLE = b'{"id":"chatcmpl-a245c66370327a23","object":"chat.completion.chunk","created":1795801522,"model":"tiny","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"prompt_token_ids":null}'
FINISH = chat_chunk(b"", b',"token_ids":null}]}').replace(b'"finish_reason":null', b'"finish_reason":"stop"')
USAGE = b'{"id":"chatcmpl-a245c66370327a23","object":"chat.completion.chunk","created":1795801522,"model":"tiny","choices":[],"usage":{"prompt_tokens":5,"total_tokens":9,"completion_tokens":4}}'


def chunk(payload: bytes, *, upper: bool = False, ext: bool = False) -> bytes:
    size = b"%X" % len(payload) if upper else b"%x" % len(payload)
    return size + (b";a=b" if ext else b"") + b"\r\n" + payload + b"\r\n"


def event(data: bytes, newline: bytes = b"\n") -> bytes:
    return b"data: " + data + newline + newline


def read(data: bytes, **kw: bool) -> bytes:
    """One whole chunk of one event: what vLLM writes per token."""
    return chunk(event(data), **kw)


def texts(*words: bytes) -> list[bytes]:
    return [read(chat_chunk(w)) for w in words]


END = [read(FINISH), read(USAGE), read(b"[DONE]"), b"0\r\n\r\n"]


class Upstream:
    """The vLLM connection's transport."""

    def __init__(self) -> None:
        self.paused = False
        self.closed = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def write(self, data: bytes) -> None:
        pass


@dataclass
class Client:
    """The client's transport: records writes; ``closing`` and ``backlog`` as a test sets them."""

    high: int = 1 << 16
    out: bytearray = field(default_factory=bytearray)
    closing: bool = False
    backlog: int = 0

    def write(self, data: bytes) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.backlog

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.high // 4, self.high


@dataclass
class Run:
    out: bytes
    relayed: int
    ended: bool
    error: str | None
    paused: bool
    closed: bool
    state: tuple[Any, ...]


def chat() -> StreamTranslator:
    return ChatStreamTranslator("tiny", arrival_ns=0)


def generate() -> StreamTranslator:
    return GenerateStreamTranslator("tiny", arrival_ns=0)


def generate_context() -> StreamTranslator:
    return GenerateStreamTranslator("tiny", arrival_ns=0, context=True)


async def relay(
    reads: list[bytes],
    *,
    on: bool,
    make: Callable[[], StreamTranslator] = chat,
    chunked: bool = True,
    act: Callable[[int, Client], None] | None = None,
) -> Run:
    """Feed ``reads`` after the response head; the relay starts once a line waits for the
    client (as the handler prepares the response then). ``act(i, client)`` runs before
    read ``i``. The state has whether the first token's time was taken (its value is the
    monotonic clock's)."""
    was = native.set_enabled(on)
    try:
        ticks = iter(range(1_800_000_000_000_000_000, 1_900_000_000_000_000_000, 700_000))
        clock = Clock(lambda: next(ticks))
        translator = make()
        stream = UpstreamStream(BackendConfig(url="http://127.0.0.1:1", name="b"), Timeouts())
        upstream = Upstream()
        stream.connection_made(upstream)  # type: ignore[arg-type]
        stream.data_received(HEAD)
        sink = _Relay(stream, Encoder(translator, clock.created_at))
        stream.attach(sink)
        client = Client()
        for i, data in enumerate(reads):
            if act is not None:
                act(i, client)
            stream.data_received(data)
            if sink.client is None and sink.out:
                sink.begin(client, chunked)  # type: ignore[arg-type]
        t = translator
        return Run(
            bytes(client.out),
            stream.relayed,
            sink.ended,
            None if sink.error is None else str(sink.error),
            upstream.paused,
            upstream.closed,
            (t.first_ns is not None, t.finish_reason, t.usage, t.prompt_ids, t.output_ids, t.output_text),
        )
    finally:
        native.set_enabled(was)


def gone_at(n: int) -> Callable[[int, Client], None]:
    def act(i: int, client: Client) -> None:
        client.closing = i >= n

    return act


def backlog_at(n: int) -> Callable[[int, Client], None]:
    def act(i: int, client: Client) -> None:
        if i == n:
            client.backlog = client.high + 1

    return act


TWO_EVENTS = chunk(event(chat_chunk(b"a")) + event(chat_chunk(b"b")))
SPLIT = read(chat_chunk(b" split"))

ROWS = [
    # (id, reads, relayed by C, options)
    ("plain-text", [read(ROLE), *texts(b"Hello", b",", b" world", b"!"), *END], 3, {}),
    ("escapes-orjson-writes-alike", [read(ROLE), *texts(b"a", b'say \\"hi\\" \\\\ \\b\\f\\n\\r\\t', b"c"), *END], 2, {}),
    (
        "non-ascii-text",
        [read(ROLE), *texts(b"a", b"Gr\xc3\xbc\xc3\x9fe \xe6\x9d\xb1\xe4\xba\xac", b"\x7f \xe2\x80\xa8"), *END],
        2,
        {},
    ),
    ("invalid-utf8-goes-to-python", [read(ROLE), *texts(b"a", b"bad \xff\xfe"), *END], 0, {}),
    ("unicode-escape-goes-to-python", [read(ROLE), *texts(b"a", b"\\u00e9t\\u00e9", b"b"), *END], 1, {}),
    ("slash-escape-goes-to-python", [read(ROLE), *texts(b"a", b"a\\/b", b"c"), *END], 1, {}),
    ("raw-control-character", [read(ROLE), *texts(b"a", b"tab\there"), *END], 0, {}),
    ("empty-text", [read(ROLE), *texts(b"a", b"", b"b"), *END], 1, {}),
    ("two-events-in-one-chunk", [read(ROLE), *texts(b"a"), TWO_EVENTS, *texts(b"c"), *END], 1, {}),
    ("two-chunks-in-one-read", [read(ROLE), *texts(b"a"), b"".join(texts(b"b", b"c")), *texts(b"d"), *END], 1, {}),
    ("chunk-split-mid-payload", [read(ROLE), *texts(b"a"), SPLIT[:20], SPLIT[20:], *texts(b"b", b"c"), *END], 2, {}),
    ("chunk-split-in-size-line", [read(ROLE), *texts(b"a"), SPLIT[:1], SPLIT[1:], *texts(b"b", b"c"), *END], 2, {}),
    ("chunk-split-before-crlf", [read(ROLE), *texts(b"a"), SPLIT[:-2], SPLIT[-2:], *texts(b"b"), *END], 0, {}),
    (
        "event-split-over-chunks",
        [
            read(ROLE),
            *texts(b"a"),
            chunk(event(chat_chunk(b"x"))[:30]),
            chunk(event(chat_chunk(b"x"))[30:]),
            *texts(b"b", b"c"),
            *END,
        ],
        2,
        {},
    ),
    (
        "uppercase-hex-size",
        [read(ROLE), read(chat_chunk(b"a"), upper=True), *[read(chat_chunk(b"b" * 40), upper=True)] * 3, *END],
        3,
        {},
    ),
    ("chunk-extension", [read(ROLE), *texts(b"a"), read(chat_chunk(b"b"), ext=True), *texts(b"c"), *END], 1, {}),
    ("crlf-sse-framing", [read(ROLE), *texts(b"a"), chunk(event(chat_chunk(b"b"), b"\r\n")), *texts(b"c"), *END], 1, {}),
    ("sse-comment", [read(ROLE), *texts(b"a"), chunk(b": keep-alive\n\n"), *texts(b"c", b"d"), *END], 2, {}),
    (
        "another-id-mid-stream",
        [read(ROLE), *texts(b"a", b"b"), read(chat_chunk(b"c").replace(b"a245", b"ffff")), *texts(b"d"), *END],
        2,
        {},
    ),
    (
        "logprobs-chunk",
        [
            read(ROLE),
            *texts(b"a"),
            read(chat_chunk(b"b").replace(b'"logprobs":null', b'"logprobs":{"content":[]}')),
            *texts(b"c"),
            *END,
        ],
        1,
        {},
    ),
    (
        "finish-in-the-text-chunk",
        [
            read(ROLE),
            *texts(b"a", b"b"),
            read(chat_chunk(b"c").replace(b'"finish_reason":null', b'"finish_reason":"length"')),
            *END[1:],
        ],
        1,
        {},
    ),
    (
        "generate",
        [
            read(cmpl_chunk(b"Once")),
            *[read(cmpl_chunk(w)) for w in (b" upon", b" a", b" time")],
            read(
                cmpl_chunk(b"", b',"prompt_token_ids":null,"token_ids":null}]}').replace(
                    b'"finish_reason":null', b'"finish_reason":"stop"'
                )
            ),
            read(b"[DONE]"),
            b"0\r\n\r\n",
        ],
        3,
        {"make": generate},
    ),
    (
        "generate-context-keeps-text-in-python",
        [read(cmpl_chunk(b"Once")), *[read(cmpl_chunk(w)) for w in (b" upon", b" a")], b"0\r\n\r\n"],
        0,
        {"make": generate_context},
    ),
    ("http-1.0-client-unchunked", [read(ROLE), *texts(b"a", b"b", b"c"), *END], 2, {"chunked": False}),
    ("client-gone", [read(ROLE), *texts(b"a", b"b", b"c", b"d"), *END], 1, {"act": gone_at(3)}),
    ("client-backlogged", [read(ROLE), *texts(b"a", b"b", b"c", b"d")], 2, {"act": backlog_at(3)}),
    ("bad-terminator-after-text", [read(ROLE), *texts(b"a", b"b"), b"0\r\nX\r\n"], 1, {}),
    ("not-hex-size", [read(ROLE), *texts(b"a", b"b"), b"zz\r\n" + event(chat_chunk(b"c")) + b"\r\n"], 1, {}),
    ("size-longer-than-the-read", [read(ROLE), *texts(b"a", b"b"), b"ff" + read(chat_chunk(b"c"))[2:]], 1, {}),
]


@pytest.mark.parametrize(("reads", "relayed", "options"), [pytest.param(r, n, o, id=i) for i, r, n, o in ROWS])
async def test_the_c_read_path_writes_what_the_python_path_writes(
    reads: list[bytes], relayed: int, options: dict[str, Any]
) -> None:
    python = await relay(reads, on=False, **options)
    fast = await relay(reads, on=True, **options)
    assert fast == Run(**{**python.__dict__, "relayed": fast.relayed})
    assert python.relayed == 0
    assert fast.relayed == (relayed if native.BUILT else 0)


async def test_the_lines_are_ollamas() -> None:
    run = await relay([read(ROLE), *texts(b"Hi", b" there"), *END], on=True)
    body, lines = run.out, []
    while body:
        size, _, rest = body.partition(b"\r\n")
        lines.append(orjson.loads(rest[: int(size, 16)]))
        body = rest[int(size, 16) + 2 :]
    assert [line["message"]["content"] for line in lines] == ["Hi", " there"]
    assert {line["model"] for line in lines} == {"tiny"} and not any(line["done"] for line in lines)
    assert run.ended and run.state[2] == {"prompt_tokens": 5, "total_tokens": 9, "completion_tokens": 4}


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    words=st.lists(st.text(max_size=12), min_size=1, max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=4),
)
def test_any_text_and_any_read_boundaries_give_the_same_bytes(words: list[str], cuts: list[int]) -> None:
    raw = b"".join([read(ROLE), *[read(chat_chunk(orjson.dumps(w)[1:-1])) for w in words], *END])
    points = sorted({c % (len(raw) + 1) for c in cuts})
    reads = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True) if raw[a:b]]

    async def both() -> tuple[Run, Run]:
        return await relay(reads, on=False), await relay(reads, on=True)

    python, fast = asyncio.run(both())
    assert fast == Run(**{**python.__dict__, "relayed": fast.relayed})


def test_the_c_read_path_is_built_where_ci_runs() -> None:
    """.ci/run sets PROXY_REQUIRE_C: a CI machine has a compiler, so a missing build is a bug."""
    if not os.environ.get("PROXY_REQUIRE_C"):
        pytest.skip("PROXY_REQUIRE_C is not set (.ci/run sets it)")
    assert native.BUILT, native.WHY_NOT


def test_without_the_c_module_streams_take_the_python_path_alone() -> None:
    """OLLAMA_PROXY_NO_C=1 (as a machine without a C compiler): the stand-in never arms and
    the same bytes come out."""
    script = (
        "import asyncio, sys\n"
        "from proxy import native\n"
        "from proxy.h1client import UpstreamStream\n"
        "from tests.unit.test_fast import ROWS, relay\n"
        "assert not native.BUILT and native.WHY_NOT == 'OLLAMA_PROXY_NO_C is set', native.WHY_NOT\n"
        "assert UpstreamStream.data_received is UpstreamStream._data_received\n"
        "run = asyncio.run(relay(ROWS[0][1], on=True))\n"
        "sys.stdout.buffer.write(run.out)\n"
    )
    env = {**os.environ, "OLLAMA_PROXY_NO_C": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    expected = asyncio.run(relay(ROWS[0][1], on=False)).out
    assert done.stdout == expected and expected
