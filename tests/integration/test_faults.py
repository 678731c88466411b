"""A broken backend, byte for byte (tests/fakes/raw.py): wrong-shaped SSE events, bad
chunk sizes, truncated bodies and stalls. Whatever it sends, the client gets a real 5xx
before the first byte, or a well-framed 200 body ending in one error line after it;
never a hang, a 500 from the proxy, or a second HTTP response inside the body. And one
log line whose status is what the client got."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import orjson
import pytest
import structlog
from structlog.testing import capture_logs

from tests.fakes.raw import END, ENV, HANG, HELLO, ROLE, SSE_HEAD, STOP, USAGE, RawBackend, Step, chunk, head, json_reply, sse

StartProxy = Callable[..., Awaitable[str]]
CHAT = "/v1/chat/completions"
IDLE = 0.3  # timeouts.idle of the proxies under test: seconds, not minutes


@pytest.fixture
async def proxy_url(start_proxy: StartProxy, raw: RawBackend) -> str:
    return await start_proxy(
        backends=[{"url": raw.url, "name": "broken"}],
        models=[{"name": "tiny", "backend": "broken", "served": "tiny", "capabilities": ["completion"]}],
        timeouts={"idle": IDLE, "first_byte": 5},
    )


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as entries:
        yield entries


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes, seconds: float) -> None:
        self.status, self.headers, self.body, self.seconds = status, headers, body, seconds

    def lines(self) -> list[dict[str, Any]]:
        assert self.body.endswith(b"\n"), self.body[-200:]
        return [orjson.loads(line) for line in self.body[:-1].split(b"\n")]


async def send(url: str, path: str, body: dict[str, Any]) -> Reply:
    """POST over a raw socket and read to EOF, checking the framing strictly: a body
    that is not exactly a sequence of chunks and a terminator fails the test."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, int(port))
    data = orjson.dumps(body)
    request_head = b"POST %b HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % (path.encode(), len(data))
    writer.write(request_head + data)
    async with asyncio.timeout(5):
        raw = await reader.read(-1)
    writer.close()
    response_head, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = response_head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    if headers.get("transfer-encoding") == "chunked":
        payload = b""
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                assert rest == b"\r\n", f"bytes after the terminator: {rest[:200]!r}"
                break
            payload, rest = payload + rest[:size], rest[size:]
            assert rest.startswith(b"\r\n"), f"a chunk not followed by CRLF: {rest[:200]!r}"
            rest = rest[2:]
    else:
        payload = rest
        assert len(payload) == int(headers["content-length"])
    assert b"HTTP/1.1" not in payload, payload[:300]
    return Reply(int(status_line.split()[1]), headers, payload, time.monotonic() - started)


def one_log_line(entries: list[dict[str, Any]]) -> dict[str, Any]:
    lines = [e for e in entries if e.get("event") == "request"]
    assert len(lines) == 1, lines
    return lines[0]


ROUTES = [
    pytest.param("/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}, "message", id="chat"),
    pytest.param("/api/generate", {"model": "tiny", "prompt": "hi"}, "", id="generate"),
]


def text_of(obj: dict[str, Any], key: str) -> str:
    return str(obj[key]["content"] if key else obj["response"])


# -- item: wrong-shaped events --------------------------------------------------------------

BAD_EVENTS = [
    pytest.param(b"[1,2]", id="a list"),
    pytest.param(b'"x"', id="a string"),
    pytest.param(b"null", id="null"),
    pytest.param(b"42", id="a number"),
    pytest.param({**ENV, "choices": {"index": 0}}, id="choices an object"),
    pytest.param({**ENV, "choices": 3}, id="choices a number"),
    pytest.param({**ENV, "choices": "abc"}, id="choices a string"),
    pytest.param({**ENV, "choices": ["x"]}, id="a choice that is a string"),
    pytest.param({**ENV, "choices": [{"index": 0, "delta": "x"}]}, id="delta a string"),
    pytest.param({**ENV, "choices": [{"index": 0, "delta": {"content": 5}}]}, id="content a number"),
    pytest.param({**ENV, "choices": [{"index": 0, "delta": {"content": ["a"]}}]}, id="content a list"),
    pytest.param({**ENV, "choices": [{"index": 0, "delta": {"tool_calls": "x"}}]}, id="tool_calls a string"),
    pytest.param({**ENV, "choices": [{"index": 0, "delta": {"tool_calls": [{"function": "f"}]}}]}, id="function a string"),
    pytest.param({**ENV, "choices": [{"index": 0, "delta": {}, "finish_reason": 7}]}, id="finish_reason a number"),
    pytest.param({**ENV, "choices": [{"index": 0, "delta": {}, "logprobs": "x"}]}, id="logprobs a string"),
    pytest.param({**ENV, "choices": [{"index": 0, "delta": {}, "logprobs": {"content": [1]}}]}, id="logprobs entries"),
    pytest.param({**ENV, "choices": [], "usage": "x"}, id="usage a string"),
    pytest.param({**ENV, "choices": [], "usage": {"prompt_tokens": "many"}}, id="usage count a string"),
    pytest.param({**ENV, "choices": [], "prompt_token_ids": "x"}, id="prompt_token_ids a string"),
]


@pytest.mark.parametrize("bad", BAD_EVENTS)
@pytest.mark.parametrize(("path", "body", "key"), ROUTES)
async def test_wrong_shaped_event_after_text_ends_the_stream_with_one_error_line(
    proxy_url: str, raw: RawBackend, logs: list[dict[str, Any]], bad: Any, path: str, body: dict[str, Any], key: str
) -> None:
    raw.script[CHAT] = [SSE_HEAD, chunk(sse(ROLE, HELLO)), 0.02, chunk(sse(bad, STOP, USAGE, b"[DONE]")), END]
    reply = await send(proxy_url, path, body)
    assert reply.status == 200 and reply.headers["content-type"] == "application/x-ndjson"
    *chunks, last = reply.lines()
    assert [text_of(c, key) for c in chunks] == ["Hello"]
    assert list(last) == ["error"] and "vLLM sent" in last["error"], last
    line = one_log_line(logs)
    assert line["status"] == 200 and line["error"] == last["error"]


@pytest.mark.parametrize("bad", BAD_EVENTS)
@pytest.mark.parametrize(("path", "body", "key"), ROUTES)
async def test_wrong_shaped_event_without_streaming_is_502(
    proxy_url: str, raw: RawBackend, logs: list[dict[str, Any]], bad: Any, path: str, body: dict[str, Any], key: str
) -> None:
    raw.script[CHAT] = [SSE_HEAD, chunk(sse(ROLE, HELLO, bad, STOP, USAGE, b"[DONE]")), END]
    reply = await send(proxy_url, path, {**body, "stream": False})
    assert reply.status == 502, reply.body
    assert list(orjson.loads(reply.body)) == ["error"] and "vLLM sent" in orjson.loads(reply.body)["error"]
    assert one_log_line(logs)["status"] == 502


async def test_wrong_shaped_first_event_is_a_502_before_any_byte(proxy_url: str, raw: RawBackend) -> None:
    raw.script[CHAT] = [SSE_HEAD, chunk(sse({**ENV, "choices": 3})), END]
    reply = await send(proxy_url, "/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status == 502 and "unexpected shape" in orjson.loads(reply.body)["error"]


# -- item: broken framing, truncation and stalls -------------------------------------------

FAULTS: list[Any] = [
    pytest.param([b"zz\r\n", HANG], "malformed HTTP response", id="bad chunk size, connection left open"),
    pytest.param([b"zz\r\nmore", 0.05], "malformed HTTP response", id="bad chunk size, then close"),
    pytest.param([b"5\r\nabcdefgh\r\n", HANG], "malformed HTTP response", id="chunk longer than its size"),
    pytest.param([b"ffff\r\ndata: {", 0.05], "broke off", id="truncated mid-chunk"),
    pytest.param([b"", 0.05], "broke off", id="closed without a terminator"),
    pytest.param([HANG], "sent nothing for 0.3 s", id="stall mid-body"),
]


@pytest.mark.parametrize(("tail", "message"), FAULTS)
@pytest.mark.parametrize(("path", "body", "key"), ROUTES)
async def test_broken_body_after_text_ends_the_stream_with_an_error_line(
    proxy_url: str, raw: RawBackend, logs: list[dict[str, Any]], tail: list[Step], message: str,
    path: str, body: dict[str, Any], key: str,
) -> None:  # fmt: skip
    raw.script[CHAT] = [SSE_HEAD, chunk(sse(ROLE, HELLO)), 0.02, *tail]
    reply = await send(proxy_url, path, body)
    assert reply.status == 200 and reply.seconds < 2
    *chunks, last = reply.lines()
    assert [text_of(c, key) for c in chunks] == ["Hello"]
    assert list(last) == ["error"] and message in last["error"], last
    assert one_log_line(logs)["status"] == 200


@pytest.mark.parametrize(
    ("tail", "status", "message"),
    [
        pytest.param([b"zz\r\n", HANG], 502, "malformed HTTP response", id="bad chunk size, connection left open"),
        pytest.param([b"zz\r\nmore", 0.05], 502, "malformed HTTP response", id="bad chunk size, then close"),
        pytest.param([b"ffff\r\ndata: {", 0.05], 502, "broke off", id="truncated mid-chunk"),
        pytest.param([b"", 0.05], 502, "broke off", id="closed without a terminator"),
        pytest.param([HANG], 504, "sent nothing for 0.3 s", id="stall mid-body"),
    ],
)
@pytest.mark.parametrize(("path", "body", "key"), ROUTES)
async def test_broken_body_without_streaming_is_a_prompt_5xx(
    proxy_url: str, raw: RawBackend, logs: list[dict[str, Any]], tail: list[Step], status: int, message: str,
    path: str, body: dict[str, Any], key: str,
) -> None:  # fmt: skip
    raw.script[CHAT] = [SSE_HEAD, chunk(sse(ROLE, HELLO)), 0.02, *tail]
    reply = await send(proxy_url, path, {**body, "stream": False})
    assert reply.status == status and reply.seconds < 2, reply.body
    assert message in orjson.loads(reply.body)["error"]
    assert one_log_line(logs)["status"] == status


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "no-stream"])
async def test_stall_after_the_head_before_any_body_is_bounded_by_first_byte(
    start_proxy: StartProxy, raw: RawBackend, stream: bool
) -> None:
    # vLLM may send its head before prefill: until the first body byte, first_byte bounds the wait.
    url = await start_proxy(
        backends=[{"url": raw.url, "name": "broken"}],
        models=[{"name": "tiny", "backend": "broken", "served": "tiny", "capabilities": ["completion"]}],
        timeouts={"idle": 0.1, "first_byte": 0.6},
    )
    raw.script[CHAT] = [SSE_HEAD, HANG]
    reply = await send(url, "/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": stream})
    assert reply.status == 504 and 0.5 < reply.seconds < 2
    assert "no body within 0.6 s" in orjson.loads(reply.body)["error"]
    assert raw.closed_by_client == 1  # the proxy dropped the connection: vLLM aborts the request


@pytest.mark.parametrize(
    ("tail", "message"),
    [
        pytest.param([b"zz\r\n", HANG], "malformed HTTP response", id="bad chunk size, connection left open"),
        pytest.param([b"ffff\r\ndata: {", 0.05], "broke off", id="truncated mid-chunk"),
        pytest.param([HANG], "sent nothing for 0.3 s", id="stall mid-body"),
    ],
)
async def test_openai_stream_ends_with_an_error_event_and_done(
    proxy_url: str, raw: RawBackend, logs: list[dict[str, Any]], tail: list[Step], message: str
) -> None:
    raw.script[CHAT] = [SSE_HEAD, chunk(sse(ROLE, HELLO)), 0.02, *tail]
    reply = await send(proxy_url, CHAT, {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    assert reply.status == 200 and reply.headers["content-type"] == "text/event-stream" and reply.seconds < 2
    events = [e.removeprefix(b"data: ") for e in reply.body.split(b"\n\n") if e]
    assert [orjson.loads(e) for e in events[:2]] == [ROLE, HELLO]
    error = orjson.loads(events[2])["error"]
    assert message in error["message"] and error["code"] in (502, 504)
    assert events[3:] == [b"[DONE]"]
    assert one_log_line(logs)["status"] == 200


@pytest.mark.parametrize(
    ("steps", "status"),
    [
        pytest.param([head("200 OK", "Content-Type: application/json", "Transfer-Encoding: chunked"), b"zz\r\n", HANG], 502,
                     id="bad chunk size"),
        pytest.param([head("200 OK", "Content-Type: application/json", "Content-Length: 100"), b'{"id":', HANG], 504,
                     id="stall mid-body"),
        pytest.param([head("200 OK", "Content-Type: application/json", "Content-Length: 100"), b'{"id":'], 502,
                     id="truncated"),
        pytest.param([head("200 OK", "Content-Length: 3"), b"{[}"], 502, id="not JSON"),
    ],
)  # fmt: skip
async def test_openai_reply_with_a_broken_body_is_a_prompt_5xx(
    proxy_url: str, raw: RawBackend, steps: list[Step], status: int
) -> None:
    raw.script[CHAT] = steps
    reply = await send(proxy_url, CHAT, {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status == status and reply.seconds < 2, reply.body
    assert orjson.loads(reply.body)["error"]["code"] == status


# -- item: context without token ids -------------------------------------------------------

GENERATE = {"model": "tiny", "prompt": "hi"}


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "no-stream"])
@pytest.mark.parametrize(
    ("tokenize", "context"),
    [
        pytest.param(json_reply({"count": 3, "max_model_len": 2048, "tokens": [11, 12, 13], "token_strs": None}),
                     [11, 12, 13], id="from /tokenize"),
        pytest.param(json_reply({"detail": "Not Found"}, "404 Not Found"), [], id="/tokenize missing: empty list"),
        pytest.param(json_reply({"tokens": "x"}), [], id="/tokenize answers nonsense: empty list"),
    ],
)  # fmt: skip
async def test_generate_without_token_ids_still_carries_context(
    proxy_url: str, raw: RawBackend, stream: bool, tokenize: list[Step], context: list[int]
) -> None:
    raw.script[CHAT] = [SSE_HEAD, chunk(sse(ROLE, HELLO, STOP, USAGE, b"[DONE]")), END]
    raw.script["/tokenize"] = tokenize
    reply = await send(proxy_url, "/api/generate", {**GENERATE, "stream": stream})
    assert reply.status == 200
    final = reply.lines()[-1] if stream else orjson.loads(reply.body)
    assert final["done"] is True and final["context"] == context
    (sent,) = raw.bodies("/tokenize")
    assert sent["continue_final_message"] is True and sent["add_generation_prompt"] is False
    assert sent["messages"][-1] == {"role": "assistant", "content": "Hello"}


async def test_generate_with_token_ids_does_not_call_tokenize(proxy_url: str, raw: RawBackend) -> None:
    role = {**ROLE, "prompt_token_ids": [1, 2]}
    hello = {**ENV, "choices": [{"index": 0, "delta": {"content": "Hello"}, "token_ids": [7]}]}
    raw.script[CHAT] = [SSE_HEAD, chunk(sse(role, hello, STOP, USAGE, b"[DONE]")), END]
    reply = await send(proxy_url, "/api/generate", GENERATE)
    assert reply.lines()[-1]["context"] == [1, 2, 7]
    assert raw.bodies("/tokenize") == []


# -- any exception after the first byte --------------------------------------------------------


@pytest.mark.parametrize(("path", "body", "key"), ROUTES)
async def test_a_proxy_bug_after_the_first_byte_still_ends_with_one_error_line(
    proxy_url: str, raw: RawBackend, logs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
    path: str, body: dict[str, Any], key: str,
) -> None:  # fmt: skip
    from proxy.translate.stream import StreamTranslator

    def broken_finish(self: StreamTranslator, created_at: str, now_ns: int) -> dict[str, Any]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(StreamTranslator, "finish", broken_finish)
    raw.script[CHAT] = [SSE_HEAD, chunk(sse(ROLE, HELLO)), 0.02, chunk(sse(STOP, USAGE, b"[DONE]")), END]
    reply = await send(proxy_url, path, body)
    assert reply.status == 200
    *chunks, last = reply.lines()
    assert [text_of(c, key) for c in chunks] == ["Hello"]
    assert last == {"error": "internal error: RuntimeError"}
    line = one_log_line(logs)
    assert line["status"] == 200 and line["error"] == "internal error: RuntimeError"
