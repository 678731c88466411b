"""The streaming hot path (proxy/fastrelay.py) over real sockets, against a scripted vLLM
that writes exact bytes: odd read boundaries, Content-Length and close-delimited bodies,
error statuses, malformed responses, and a client too slow to keep up (backpressure)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from tests.fakes.raw import END, LoopbackServer, chunk, head
from tests.integration.helpers import JSON, NDJSON, ndjson

StartProxy = Callable[..., Awaitable[str]]
USER = [{"role": "user", "content": "hi there"}]
ENVELOPE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "tiny"}


def events(tokens: list[str], finish: str = "stop") -> list[bytes]:
    """vLLM's SSE events for a chat stream: role chunk, tokens, finish, usage, [DONE]."""

    def chunk(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
        return {**ENVELOPE, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]}

    objects = [chunk({"role": "assistant", "content": ""}), *(chunk({"content": t}) for t in tokens), chunk({}, finish)]
    usage = {"prompt_tokens": 5, "completion_tokens": len(tokens), "total_tokens": 5 + len(tokens)}
    objects.append({**ENVELOPE, "choices": [], "usage": usage})
    return [b"data: " + orjson.dumps(o) + b"\n\n" for o in objects] + [b"data: [DONE]\n\n"]


def chunked(pieces: list[bytes]) -> bytes:
    return b"".join(chunk(p) for p in pieces) + END


SSE = "Content-Type: text/event-stream; charset=utf-8"
ERROR_400 = b'{"error":{"message":"too long","type":"BadRequestError","param":null,"code":400}}'
TOKENS = ["Hello", ",", " wörld", "!\n"]


class ScriptedVLLM(LoopbackServer):
    """Answers every POST with ``reply`` (pieces written one by one, ``pause`` s apart) and
    records what it was sent; GET /v1/models gets a 404 (the model is a configured alias)."""

    def __init__(self) -> None:
        super().__init__()
        self.reply: list[bytes] = []
        self.pause = 0.0
        self.close_after = True  # close once the reply is written
        self.requests: list[tuple[bytes, bytes]] = []
        self.sent = 0  # bytes of reply the kernel took
        self.upstream_closed_at: float | None = None  # when the proxy closed its end

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_head = await reader.readuntil(b"\r\n\r\n")
            if request_head.startswith(b"GET"):
                writer.write(head("404 Not Found", "Content-Length: 0", "Connection: close"))
                return
            length = int(next(line.split(b":")[1] for line in request_head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))  # fmt: skip
            self.requests.append((request_head, await reader.readexactly(length)))
            watch = asyncio.ensure_future(self._watch(reader))
            for piece in self.reply:
                writer.write(piece)
                await writer.drain()
                self.sent += len(piece)
                if self.pause:
                    await asyncio.sleep(self.pause)
            if not self.close_after:
                await watch
        except (ConnectionError, asyncio.IncompleteReadError):
            pass

    async def _watch(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.read()
        self.upstream_closed_at = time.monotonic()


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedVLLM]:
    server = ScriptedVLLM()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def proxy_url(start_proxy: StartProxy, scripted: ScriptedVLLM) -> str:
    return await start_proxy(backends=[{"url": scripted.url, "name": "gpu1", "api_key": "k3y"}],
                             models=[{"name": "tiny", "backend": "gpu1", "served": "tiny"}])  # fmt: skip


async def chat(session: aiohttp.ClientSession, url: str, **extra: Any) -> tuple[int, str, bytes]:
    body = {"model": "tiny", "messages": USER, **extra}
    async with session.post(url + "/api/chat", data=orjson.dumps(body), headers={"X-Request-Id": "rid-7"}) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.read()


def assert_relayed(status: int, ctype: str, raw: bytes, tokens: list[str] = TOKENS) -> None:
    assert (status, ctype) == (200, NDJSON), raw[:300]
    *chunks, final = ndjson(raw)
    assert [c["message"]["content"] for c in chunks] == tokens
    assert final["done"] is True and final["done_reason"] == "stop"
    assert (final["prompt_eval_count"], final["eval_count"]) == (5, len(tokens))


def pieces_of(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def chunked_reply() -> bytes:
    return head("200 OK", SSE, "Transfer-Encoding: chunked") + chunked(events(TOKENS))


def length_reply() -> bytes:
    body = b"".join(events(TOKENS))
    return head("200 OK", SSE, f"Content-Length: {len(body)}") + body


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(lambda: [chunked_reply()], id="one-write"),
        pytest.param(lambda: pieces_of(chunked_reply(), 7), id="chunked-in-7-byte-pieces"),
        pytest.param(lambda: [*pieces_of(chunked_reply()[:300], 1), chunked_reply()[300:]], id="byte-by-byte-through-the-head"),
        pytest.param(lambda: [chunked_reply()[:-5], b"0\r\n\r\n"], id="terminator-apart"),
        pytest.param(lambda: [head("100 Continue"), chunked_reply()], id="after-100-continue"),
        pytest.param(lambda: pieces_of(length_reply(), 11), id="content-length"),
        pytest.param(lambda: [length_reply() + b"data: ignored\n\n"], id="content-length-then-junk"),
        pytest.param(lambda: [head("200 OK", SSE), *events(TOKENS)], id="close-delimited"),
    ],
)  # fmt: skip
async def test_stream_is_relayed_whatever_the_framing_and_read_boundaries(
    proxy_url: str, scripted: ScriptedVLLM, session: aiohttp.ClientSession, reply: Callable[[], list[bytes]]
) -> None:
    scripted.reply, scripted.pause = reply(), 0.001
    assert_relayed(*await chat(session, proxy_url))


async def test_request_carries_the_backend_key_json_and_request_id(
    proxy_url: str, scripted: ScriptedVLLM, session: aiohttp.ClientSession
) -> None:
    scripted.reply = [head("200 OK", SSE, "Transfer-Encoding: chunked") + chunked(events(TOKENS))]
    assert_relayed(*await chat(session, proxy_url, options={"num_predict": 4}))
    (request_head, body) = scripted.requests[-1]
    lines = request_head.decode().split("\r\n")
    assert lines[0] == "POST /v1/chat/completions HTTP/1.1"
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if line)}
    assert headers["host"] == scripted.url.removeprefix("http://")
    assert headers["content-type"] == "application/json"
    assert headers["authorization"] == "Bearer k3y"
    assert headers["x-request-id"] == "rid-7"
    assert int(headers["content-length"]) == len(body)
    sent = orjson.loads(body)
    assert (sent["model"], sent["stream"], sent["max_tokens"]) == ("tiny", True, 4)


@pytest.mark.parametrize(
    ("reply", "status", "message"),
    [
        pytest.param([head("400 Bad Request", "Content-Type: application/json", f"Content-Length: {len(ERROR_400)}"),
                      ERROR_400], 400, "too long", id="400-length"),
        pytest.param([head("500 Internal Server Error", "Transfer-Encoding: chunked"),
                      chunked([b'{"object":"error",', b'"message":"EngineCore died"}'])], 500,
                     "vLLM backend gpu1: EngineCore died", id="500-chunked-flat"),
        pytest.param([head("503 Service Unavailable"), b"overloaded"], 503, "vLLM backend gpu1: overloaded",
                     id="503-close-delimited-text"),
        pytest.param([head("401 Unauthorized", "Content-Length: 0")], 401, "vLLM backend gpu1 answered HTTP 401",
                     id="401-empty"),
    ],
)  # fmt: skip
async def test_error_status_is_the_clients_status_before_any_byte(
    proxy_url: str, scripted: ScriptedVLLM, session: aiohttp.ClientSession, reply: list[bytes], status: int, message: str
) -> None:
    scripted.reply = [b for piece in reply for b in pieces_of(piece, 5)]
    scripted.pause = 0.001
    got, ctype, raw = await chat(session, proxy_url)
    assert (got, ctype, orjson.loads(raw)) == (status, JSON, {"error": message})


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        pytest.param([b"SSH-2.0-OpenSSH_9.6\r\n\r\n"], 502, id="not-http"),
        pytest.param([b""], 502, id="closed-without-answer"),
        pytest.param([head("200 OK", SSE, "Transfer-Encoding: chunked"), b"zz\r\n"], 502, id="bad-chunk-before-text"),
    ],
)
async def test_malformed_or_missing_answer_is_502(
    proxy_url: str, scripted: ScriptedVLLM, session: aiohttp.ClientSession, reply: list[bytes], status: int
) -> None:
    scripted.reply = reply
    got, ctype, raw = await chat(session, proxy_url)
    assert (got, ctype) == (status, JSON)
    assert "gpu1" in orjson.loads(raw)["error"] or "vLLM" in orjson.loads(raw)["error"]


async def test_bad_framing_after_text_ends_with_an_error_line(
    proxy_url: str, scripted: ScriptedVLLM, session: aiohttp.ClientSession
) -> None:
    first = events(TOKENS)[:3]  # role, "Hello", ","
    scripted.reply = [head("200 OK", SSE, "Transfer-Encoding: chunked") + chunked(first)[:-5], b"zz\r\n"]
    scripted.pause = 0.05  # two reads: the bad framing does not take the good chunks with it
    status, ctype, raw = await chat(session, proxy_url)
    assert (status, ctype) == (200, NDJSON)
    *chunks, last = ndjson(raw)
    assert [c["message"]["content"] for c in chunks] == ["Hello", ","]
    assert list(last) == ["error"] and "malformed" in last["error"]


async def test_http10_client_gets_an_unchunked_body(proxy_url: str, scripted: ScriptedVLLM) -> None:
    scripted.reply = [head("200 OK", SSE, "Transfer-Encoding: chunked") + chunked(events(TOKENS))]
    host, port = proxy_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = orjson.dumps({"model": "tiny", "messages": USER})
    writer.write(b"POST /api/chat HTTP/1.0\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
    async with asyncio.timeout(5):
        raw = await reader.read(-1)
    writer.close()
    response_head, _, payload = raw.partition(b"\r\n\r\n")
    assert response_head.startswith(b"HTTP/1.0 200") and b"chunked" not in response_head.lower()
    assert_relayed(200, NDJSON, payload)


# -- backpressure ---------------------------------------------------------------------------------

BIG = "x" * 4000  # per token: the bytes that fill buffers, at few events (the per-event cost)
BIG_TOKENS = 10_000  # ~40 MB each way: far more than the kernel's socket buffers hold


def big_reply() -> list[bytes]:
    all_events = events([BIG] * BIG_TOKENS)
    blocks = [chunked(all_events[i : i + 50])[:-5] for i in range(0, len(all_events), 50)]
    return [head("200 OK", SSE, "Transfer-Encoding: chunked"), *blocks, b"0\r\n\r\n"]


async def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return condition()


async def stalled(scripted: ScriptedVLLM) -> int:
    """How much the scripted vLLM got out once its writes stopped making progress."""
    assert await wait_until(lambda: scripted.sent > 0, 2.0)
    last = -1
    while scripted.sent != last:
        last = scripted.sent
        await asyncio.sleep(0.3)
    return last


async def test_slow_client_pauses_the_upstream_and_resumes_it(proxy_url: str, scripted: ScriptedVLLM) -> None:
    scripted.reply = big_reply()
    total = sum(len(p) for p in scripted.reply)
    body = {"model": "tiny", "messages": USER}
    async with aiohttp.ClientSession() as client, client.post(proxy_url + "/api/chat", json=body) as response:
        assert response.status == 200
        sent = await stalled(scripted)  # the client reads nothing meanwhile
        assert sent < total / 2, (sent, total)
        raw = await response.read()  # now it does: the upstream is read again
    assert scripted.sent == total
    *chunks, final = ndjson(raw)
    assert len(chunks) == BIG_TOKENS and all(c["message"]["content"] == BIG for c in chunks)
    assert final["done"] is True and final["eval_count"] == BIG_TOKENS


async def test_client_leaving_while_backlogged_closes_the_upstream(proxy_url: str, scripted: ScriptedVLLM) -> None:
    scripted.reply = big_reply()
    scripted.close_after = False
    client = aiohttp.ClientSession()
    response = await client.post(proxy_url + "/api/chat", json={"model": "tiny", "messages": USER})
    await stalled(scripted)
    assert scripted.upstream_closed_at is None
    left = time.monotonic()
    response.close()
    await client.close()
    assert await wait_until(lambda: scripted.upstream_closed_at is not None, 1.0)
    assert scripted.upstream_closed_at is not None and scripted.upstream_closed_at - left < 1.0
