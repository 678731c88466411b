"""Bad client input over real sockets: always a 4xx with an ``{"error"}`` that names the
problem, never a 5xx, and nothing sent to vLLM; oversize bodies refused without being
buffered whole."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from proxy import body as body_limits
from tests.fakes.vllm import FakeVLLM

USER = [{"role": "user", "content": "hi"}]


def nested(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def chat(**extra: Any) -> bytes:
    return orjson.dumps({"model": "tiny", "messages": USER, "stream": False, **extra})


def generate_with(options: bytes) -> bytes:
    return b'{"model":"tiny","prompt":"hi","stream":false,"options":' + options + b"}"


def go_error(value: str, field: str, go_type: str) -> str:
    return f"json: cannot unmarshal {value} into Go struct field {field} of type {go_type}"


@pytest.mark.parametrize(
    ("path", "raw", "headers", "error"),
    [
        pytest.param("/api/chat", b'{"model":"tiny","messages":[],"options":' + nested(255) + b"}", {},
                     "invalid JSON: nested more than 128 levels deep", id="nesting-255"),
        pytest.param("/api/chat", b'{"model":"tiny","format":' + b'{"a":' * 200 + b"1" + b"}" * 201, {},
                     "invalid JSON: nested more than 128 levels deep", id="schema-nested-200"),
        pytest.param("/v1/chat/completions", b'{"model":"tiny","x":' + nested(600) + b"}", {},
                     "invalid JSON: nested more than 128 levels deep", id="openai-nesting-600"),
        pytest.param("/api/generate", b'{"model":"tiny","x":' + nested(1024) + b"}", {},
                     "invalid JSON: depth limit exceeded", id="nesting-1024"),
        pytest.param("/api/generate", b'{"model":"tiny","x":' + b"[" * 300, {},
                     "invalid JSON: unexpected end of data, nested more than 128 levels deep", id="cut-off-300-deep"),
        pytest.param("/api/generate", orjson.dumps({"model": "tiny", "prompt": "hi", "images": "aGk="}), {},
                     go_error("string", "GenerateRequest.images", "[]api.ImageData"), id="images-string"),
        pytest.param("/api/generate", orjson.dumps({"model": "tiny", "prompt": "hi", "images": [1]}), {},
                     go_error("number", "GenerateRequest.images", "api.ImageData"), id="image-number"),
        pytest.param("/api/chat", chat(messages=[{"role": "user", "content": "hi", "images": {"a": "b"}}]), {},
                     go_error("object", "Message.messages.images", "[]api.ImageData"), id="message-images-object"),
        pytest.param("/api/chat", chat(messages=[{"role": "assistant", "tool_calls": "call it"}]), {},
                     go_error("string", "Message.messages.tool_calls", "[]api.ToolCall"), id="tool-calls-string"),
        pytest.param("/api/chat", chat(messages=[{"role": "assistant", "tool_calls": [{"function": "f"}]}]), {},
                     go_error("string", "ToolCall.messages.tool_calls.function", "api.ToolCallFunction"),
                     id="tool-call-function-string"),
        pytest.param("/api/chat", chat(messages=[{"role": 1, "content": "hi"}]), {},
                     go_error("number", "Message.messages.role", "string"), id="role-number"),
        pytest.param("/api/generate", orjson.dumps({"model": "tiny", "prompt": "hi", "system": ["x"]}), {},
                     go_error("array", "GenerateRequest.system", "string"), id="system-array"),
        pytest.param("/api/chat", b"this is not gzip", {"Content-Encoding": "gzip"},
                     "invalid request body: not valid gzip data (Content-Encoding: gzip)", id="gzip-not-gzip"),
        pytest.param("/api/chat", b"this is not deflate", {"Content-Encoding": "deflate"},
                     "invalid request body: not valid deflate data (Content-Encoding: deflate)", id="deflate-not-deflate"),
        pytest.param("/api/chat", gzip.compress(chat())[:-12], {"Content-Encoding": "gzip"},
                     "invalid request body: truncated gzip data (Content-Encoding: gzip)", id="gzip-truncated"),
        pytest.param("/api/chat", zlib.compress(chat())[:-6], {"Content-Encoding": "deflate"},
                     "invalid request body: truncated deflate data (Content-Encoding: deflate)", id="deflate-truncated"),
        pytest.param("/api/chat", zlib.compress(chat()) + b"{}", {"Content-Encoding": "deflate"},
                     "invalid request body: data after the end of the deflate stream (Content-Encoding: deflate)",
                     id="deflate-trailing-bytes"),
        pytest.param("/api/chat", gzip.compress(chat()) + b"garbage", {"Content-Encoding": "gzip"},
                     "invalid request body: not valid gzip data (Content-Encoding: gzip)", id="gzip-trailing-garbage"),
        pytest.param("/api/chat", chat(), {"Content-Encoding": "br"},
                     "unsupported Content-Encoding: br (the proxy decodes gzip, deflate or identity, one at a time)", id="br"),
        pytest.param("/v1/chat/completions", chat(), {"Content-Encoding": "zstd"},
                     "unsupported Content-Encoding: zstd", id="openai-zstd"),
        pytest.param("/api/chat", gzip.compress(zlib.compress(chat())), {"Content-Encoding": "deflate, gzip"},
                     "unsupported Content-Encoding: deflate, gzip", id="two-codings"),
        pytest.param("/api/generate", generate_with(b'{"seed":1e20}'), {},
                     'option "seed" must be of type int: 1e+20 is out of range', id="seed-1e20"),
        pytest.param("/api/generate", generate_with(b'{"seed":18446744073709551616}'), {},
                     'option "seed" must be of type int', id="seed-2-pow-64"),
        pytest.param("/api/chat", b'{"model":"tiny","messages":[],"options":{"num_predict":-1e30}}', {},
                     'option "num_predict" must be of type int', id="num-predict-huge-negative"),
        pytest.param("/api/generate", generate_with(b'{"num_ctx":1e20}'), {},
                     'option "num_ctx" must be of type int', id="num-ctx-1e20-though-dropped"),
        pytest.param("/api/generate", generate_with(b'{"num_ctx":"big"}'), {},
                     'option "num_ctx" must be of type int', id="num-ctx-string"),
    ],
)  # fmt: skip
async def test_bad_input_is_a_400_that_names_the_problem(
    base_url: str, session: aiohttp.ClientSession, fake: FakeVLLM, path: str, raw: bytes, headers: dict[str, str], error: str
) -> None:
    before = len(fake.requests)
    async with session.post(base_url + path, data=raw, headers=headers) as resp:
        status, reply = resp.status, await resp.json(content_type=None)
    assert status == 400, reply
    message = reply["error"]["message"] if path.startswith("/v1/") else reply["error"]
    assert message.startswith(error), reply
    assert len(fake.requests) == before


@pytest.mark.parametrize(
    ("path", "raw", "kind"),
    [
        pytest.param("/v1/chat/completions", b'{"model":"tiny","messages":[{"role":"user","content":"hi"}],"stream":"true"}',
                     "a string", id="chat-stream-string"),
        pytest.param("/v1/chat/completions", b'{"model":"tiny","messages":[{"role":"user","content":"hi"}],"stream":1}',
                     "an integer", id="chat-stream-one"),
        pytest.param("/v1/completions", b'{"model":"tiny","prompt":"hi","stream":1}', "an integer", id="completions-stream-one"),
    ],
)  # fmt: skip
async def test_openai_stream_that_is_not_a_bool_is_a_400_in_openais_shape(
    base_url: str, session: aiohttp.ClientSession, fake: FakeVLLM, path: str, raw: bytes, kind: str
) -> None:
    before = len(fake.requests)
    async with session.post(base_url + path, data=raw) as resp:
        status, reply = resp.status, await resp.json()
    assert status == 400
    assert reply == {"error": {"message": f"Invalid type for 'stream': expected a boolean, but got {kind} instead.",
                               "type": "invalid_request_error", "param": None, "code": 400}}  # fmt: skip
    assert len(fake.requests) == before


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def two_gzip_members(data: bytes) -> bytes:
    return gzip.compress(data[:10]) + gzip.compress(data[10:])  # what `cat a.gz b.gz` makes


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        pytest.param("gzip", gzip.compress, id="gzip"),
        pytest.param("x-gzip", gzip.compress, id="x-gzip"),
        pytest.param("GZIP", gzip.compress, id="upper-case"),
        pytest.param("gzip", two_gzip_members, id="gzip-two-members"),
        pytest.param("deflate", zlib.compress, id="deflate"),
        pytest.param("deflate", raw_deflate, id="deflate-without-zlib-header"),
        pytest.param("identity", bytes, id="identity"),
        pytest.param("identity, gzip", gzip.compress, id="identity-then-gzip"),
    ],
)
@pytest.mark.parametrize("chunked", [pytest.param(False, id="content-length"), pytest.param(True, id="chunked")])
async def test_a_compressed_body_is_decoded(
    base_url: str, session: aiohttp.ClientSession, encoding: str, encode: Callable[[bytes], bytes], chunked: bool
) -> None:
    data = encode(chat())

    async def pieces() -> AsyncIterator[bytes]:
        for at in range(0, len(data), 7):  # inflated a few bytes at a time
            yield data[at : at + 7]

    body = pieces() if chunked else data
    async with session.post(base_url + "/api/chat", data=body, headers={"Content-Encoding": encoding}) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["message"]["content"] == "Hello, world!"


async def _raw_request(base_url: str, head: str, body_parts: list[bytes]) -> tuple[bytes, int]:
    """Send a request head and body parts over a raw socket until the server answers;
    returns the response and how many body parts were sent before it did."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head.encode())
    sent = 0
    response = asyncio.ensure_future(reader.read(65536))
    try:
        for part in body_parts:
            if response.done():
                break
            writer.write(part)
            await writer.drain()
            sent += 1
            await asyncio.sleep(0)
        return await asyncio.wait_for(response, 5), sent
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("encoding", "body", "error"),
    [
        pytest.param("deflate", zlib.compress(chat())[:-6], "truncated deflate data", id="deflate-truncated"),
        pytest.param("deflate", b"\xc0.", "truncated deflate data", id="deflate-raw-cut"),  # the fuzz test's find
        pytest.param("gzip", gzip.compress(chat())[:-12], "truncated gzip data", id="gzip-truncated"),
    ],
)  # fmt: skip
async def test_a_bad_chunked_compressed_body_is_answered_not_awaited(
    base_url: str, encoding: str, body: bytes, error: str
) -> None:
    """aiohttp's own inflater failed such a body only once its last chunk came, after the
    handler had started reading: the handler then waited for the rest forever."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = f"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Encoding: {encoding}\r\nTransfer-Encoding: chunked\r\n\r\n"
        for part in (head.encode(), b"%x\r\n%s\r\n" % (len(body), body), b"0\r\n\r\n"):
            writer.write(part)  # each in its own segment, as a streaming client sends them
            await writer.drain()
            await asyncio.sleep(0.02)
        reply = await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert orjson.loads(reply.split(b"\r\n\r\n", 1)[1]) == {
        "error": f"invalid request body: {error} (Content-Encoding: {encoding})"
    }


async def test_a_content_length_over_the_limit_is_refused_before_the_body_is_sent(base_url: str) -> None:
    head = f"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: {257 * 1024 * 1024}\r\n\r\n"
    reply, _ = await _raw_request(base_url, head, [])  # not one byte of the body sent
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large"
    assert b"Connection: close" in rest
    error = orjson.loads(rest.split(b"\r\n\r\n", 1)[1])["error"]
    assert error == f"request body too large: Content-Length {257 * 1024 * 1024} is over the 256 MiB limit"


async def test_a_body_over_the_limit_is_not_invited_by_100_continue(base_url: str) -> None:
    """curl asks ``Expect: 100-continue`` before a large upload: the answer is the 413, so
    the body is never sent (aiohttp's default would invite it first)."""
    head = f"POST /api/chat HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {257 * 1024 * 1024}\r\n\r\n"
    reply, _ = await _raw_request(base_url, head, [])
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:100]
    assert b"100 Continue" not in reply


async def test_a_body_within_the_limit_is_invited_by_100_continue(base_url: str) -> None:
    data = chat()
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = f"POST /api/chat HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {len(data)}\r\n\r\n"
        writer.write(head.encode())
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(data)
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)).startswith(b"HTTP/1.1 200 ")
    finally:
        writer.close()


async def test_a_chunked_body_is_refused_once_it_passes_the_limit(base_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(body_limits, "MAX_BODY_BYTES", 1024 * 1024)
    piece = b" " * 65536
    parts = [b"%x\r\n%s\r\n" % (len(piece), piece)] * 64  # 4 MiB offered
    head = "POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    reply, sent = await _raw_request(base_url, head, parts)
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert b"request body too large: the body is over the 1 MiB limit" in reply
    assert sent < 64  # answered while the client was still sending


async def test_a_gzip_bomb_stops_inflating_at_the_ratio_cap(base_url: str, session: aiohttp.ClientSession) -> None:
    bomb = gzip.compress(b'{"model":"tiny","prompt":"' + b" " * (64 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 100 * 1024
    async with session.post(base_url + "/api/generate", data=bomb, headers={"Content-Encoding": "gzip"}) as resp:
        status, reply = resp.status, await resp.json()
    assert status == 413
    assert reply["error"].startswith("request body too large: the gzip body inflates to more than 100 times its ")
