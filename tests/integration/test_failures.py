"""Backend failures as an Ollama client sees them: errors before the first byte get a
real status and ``{"error": ...}``; after it, one final error line; hang-ups abort the
generation in vLLM; pooled connections the backend closed do not fail requests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient

from tests.fakes.timers import FakeTimers
from tests.fakes.vllm import FakeVLLM, Model
from tests.integration.helpers import (
    JSON,
    NDJSON,
    BreakingVLLM,
    DroppingForwarder,
    SilentServer,
    assert_final,
    closed_port,
    ndjson,
    usage_of,
)

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi there"}]
StartProxy = Callable[..., Awaitable[str]]

REQUESTS = [
    pytest.param("/api/chat", {"model": "tiny", "messages": USER, "stream": True}, id="chat-stream"),
    pytest.param("/api/chat", {"model": "tiny", "messages": USER, "stream": False}, id="chat"),
    pytest.param("/api/generate", {"model": "tiny", "prompt": "hi", "stream": True}, id="generate-stream"),
    pytest.param("/api/generate", {"model": "tiny", "prompt": "hi", "raw": True, "stream": False}, id="generate-raw"),
    pytest.param("/api/embed", {"model": "minilm", "input": ["a"]}, id="embed"),
    pytest.param("/api/embeddings", {"model": "minilm", "prompt": "a"}, id="embeddings"),
]


async def post(url_or_client: Any, path: str, body: Any, session: aiohttp.ClientSession | None = None) -> tuple[int, str, bytes]:
    if session is not None:
        async with session.post(url_or_client + path, data=orjson.dumps(body)) as r:
            return r.status, r.headers.get("Content-Type", ""), await r.read()
    async with url_or_client.post(path, data=orjson.dumps(body)) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.read()


# -- vLLM answers with an error before the first byte -------------------------------------


@pytest.mark.parametrize("shape", ["nested", "flat"])
@pytest.mark.parametrize(
    ("vllm_status", "message", "status", "expected"),
    [
        pytest.param(400, "This model's maximum context length is 2048 tokens. However, your prompt contains 3000 input "
                     "tokens, which exceeds this limit even without any output tokens.", 400, None, id="400"),
        pytest.param(500, "EngineCore encountered an issue.", 500, "vLLM backend fake: EngineCore encountered an issue.",
                     id="500"),
        pytest.param(503, "The server is overloaded.", 503, "vLLM backend fake: The server is overloaded.", id="503"),
    ],
)  # fmt: skip
@pytest.mark.parametrize(("path", "body"), REQUESTS)
async def test_backend_error_keeps_status_and_message(
    client: TestClient, fake: FakeVLLM, shape: str, vllm_status: int, message: str, status: int,
    expected: str | None, path: str, body: dict[str, Any],
) -> None:  # fmt: skip
    fake.error_shape = shape
    fake.fail_next = (vllm_status, message)
    got_status, ctype, raw = await post(client, path, body)
    assert (got_status, ctype) == (status, JSON), raw
    assert orjson.loads(raw) == {"error": expected or message}
    assert fake.fail_next is None  # the request did reach vLLM, once


async def test_backend_404_stays_404(client: TestClient, fake: FakeVLLM) -> None:
    # e.g. the vLLM server was restarted with another model since discovery
    fake.fail_next = (404, "The model `tiny` does not exist.")
    status, ctype, raw = await post(client, "/api/chat", {"model": "tiny", "messages": USER})
    assert (status, ctype) == (404, JSON)
    assert "tiny" in orjson.loads(raw)["error"]


async def test_backend_5xx_names_the_backend(client: TestClient, fake: FakeVLLM) -> None:
    fake.fail_next = (500, "boom")
    status, _, raw = await post(client, "/api/chat", {"model": "tiny", "messages": USER})
    assert status == 500
    assert "fake" in orjson.loads(raw)["error"]


async def test_a_failed_request_does_not_poison_the_next(client: TestClient, fake: FakeVLLM) -> None:
    fake.fail_next = (500, "boom")
    first, _, _ = await post(client, "/api/chat", {"model": "tiny", "messages": USER, "stream": False})
    second, _, raw = await post(client, "/api/chat", {"model": "tiny", "messages": USER, "stream": False})
    assert (first, second) == (500, 200)
    assert orjson.loads(raw)["message"]["content"] == "Hello, world!"


@pytest.mark.parametrize(
    ("truncate", "expected"),
    [
        pytest.param(False, "the input length exceeds the context length", id="truncate-false"),
        pytest.param(None, None, id="truncate-default"),
    ],
)
async def test_embed_over_the_context(client: TestClient, fake: FakeVLLM, truncate: bool | None, expected: str | None) -> None:
    message = ("This model's maximum context length is 256 tokens. However, you requested 300 tokens in the input "
               "for embedding generation. Please reduce the length of the input.")  # fmt: skip
    fake.fail_next = (400, message)
    body: dict[str, Any] = {"model": "minilm", "input": "long " * 300}
    if truncate is not None:
        body["truncate"] = truncate
    status, _, raw = await post(client, "/api/embed", body)
    assert status == 400
    assert orjson.loads(raw) == {"error": expected or message}
    sent = fake.last("/v1/embeddings")
    if truncate is False:
        assert "truncate_prompt_tokens" not in sent
    else:
        assert sent["truncate_prompt_tokens"] == -1


# -- the backend is down or silent ------------------------------------------------------------


def alias(url: str) -> dict[str, Any]:
    return {"backends": [{"url": url, "name": "gpu1"}], "models": [{"name": "tiny", "backend": "gpu1", "served": "tiny"}]}


@pytest.mark.parametrize(("path", "body"), REQUESTS[:4])
async def test_backend_down_is_502_naming_the_backend_quickly(
    start_proxy: StartProxy, session: aiohttp.ClientSession, path: str, body: dict[str, Any]
) -> None:
    port = closed_port()
    url = await start_proxy(**alias(f"http://127.0.0.1:{port}"))
    started = time.monotonic()
    status, ctype, raw = await post(url, path, body, session)
    assert time.monotonic() - started < 2.0
    assert (status, ctype) == (502, JSON)
    error = orjson.loads(raw)["error"]
    assert "gpu1" in error and str(port) in error


async def test_backend_that_went_down_after_discovery_is_502(start_proxy: StartProxy, session: aiohttp.ClientSession) -> None:
    backend = FakeVLLM({"tiny": Model()})
    await backend.start()
    url = await start_proxy(backends=[{"url": backend.url, "name": "gpu1"}])
    status, _, _ = await post(url, "/api/chat", {"model": "tiny", "messages": USER, "stream": False}, session)
    assert status == 200
    await backend.stop()
    started = time.monotonic()
    status, ctype, raw = await post(url, "/api/chat", {"model": "tiny", "messages": USER}, session)
    assert time.monotonic() - started < 2.0
    assert (status, ctype) == (502, JSON)
    assert "gpu1" in orjson.loads(raw)["error"]


@pytest.fixture
async def silent() -> AsyncIterator[SilentServer]:
    server = SilentServer()
    await server.start()
    yield server
    await server.stop()


@pytest.mark.parametrize(("path", "body"), REQUESTS[:4])
async def test_backend_that_never_answers_is_504_after_first_byte_timeout(
    start_proxy: StartProxy, session: aiohttp.ClientSession, silent: SilentServer, path: str, body: dict[str, Any]
) -> None:
    url = await start_proxy(**alias(silent.url), timeouts={"first_byte": 0.3, "discovery": 0.1})
    started = time.monotonic()
    status, ctype, raw = await post(url, path, body, session)
    elapsed = time.monotonic() - started
    assert (status, ctype) == (504, JSON)
    assert 0.25 <= elapsed < 2.0
    assert "gpu1" in orjson.loads(raw)["error"]
    assert silent.connections >= 1


async def test_first_byte_timeout_does_not_cut_a_long_generation(
    start_proxy: StartProxy, session: aiohttp.ClientSession, fake: FakeVLLM
) -> None:
    url = await start_proxy(backends=[{"url": fake.url, "name": "fake"}], timeouts={"first_byte": 0.2})
    fake.token_delay = 0.1  # ~0.6 s in all, three times the first-byte timeout
    for stream in (True, False):
        status, _, raw = await post(url, "/api/chat", {"model": "tiny", "messages": USER, "stream": stream}, session)
        assert status == 200, raw
        objects = ndjson(raw) if stream else [orjson.loads(raw)]
        assert "".join(o["message"]["content"] for o in objects) == "Hello, world!"
        assert_final(objects[-1], usage_of(fake))


# -- errors after the first byte ---------------------------------------------------------------


@pytest.mark.parametrize("shape", ["nested", "flat"])
@pytest.mark.parametrize(
    ("path", "body", "text_of"),
    [
        pytest.param("/api/chat", {"model": "tiny", "messages": USER}, lambda o: o["message"]["content"], id="chat"),
        pytest.param("/api/generate", {"model": "tiny", "prompt": "hi"}, lambda o: o["response"], id="generate"),
        pytest.param("/api/generate", {"model": "tiny", "prompt": "hi", "raw": True}, lambda o: o["response"], id="raw"),
    ],
)
async def test_midstream_error_ends_with_one_error_line(
    client: TestClient, fake: FakeVLLM, shape: str, path: str, body: dict[str, Any], text_of: Any
) -> None:
    fake.error_shape = shape  # the fake's mid-stream event is nested either way
    fake.midstream_error = "an error was encountered while running the model"
    status, ctype, raw = await post(client, path, {**body, "stream": True})
    assert (status, ctype) == (200, NDJSON)
    *chunks, last = ndjson(raw)
    assert last == {"error": "an error was encountered while running the model"}
    assert chunks and all(o["done"] is False for o in chunks)
    assert text_of(chunks[0]) == "Hello"


async def test_midstream_error_without_streaming_is_an_error_status(client: TestClient, fake: FakeVLLM) -> None:
    fake.midstream_error = "an error was encountered while running the model"
    status, ctype, raw = await post(client, "/api/chat", {"model": "tiny", "messages": USER, "stream": False})
    assert 400 <= status < 600
    assert ctype == JSON
    assert orjson.loads(raw) == {"error": "an error was encountered while running the model"}


@pytest.fixture
async def breaking() -> AsyncIterator[BreakingVLLM]:
    server = BreakingVLLM({"tiny": Model()})
    await server.start()
    yield server
    await server.stop()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/api/chat", {"model": "tiny", "messages": USER}, id="chat"),
        pytest.param("/api/generate", {"model": "tiny", "prompt": "hi"}, id="generate"),
    ],
)
async def test_stream_that_breaks_off_ends_with_an_error_line(
    start_proxy: StartProxy, session: aiohttp.ClientSession, breaking: BreakingVLLM, path: str, body: dict[str, Any]
) -> None:
    url = await start_proxy(backends=[{"url": breaking.url, "name": "gpu1"}])
    breaking.break_after = 3  # role chunk, "Hello", ","
    status, ctype, raw = await post(url, path, {**body, "stream": True}, session)
    assert (status, ctype) == (200, NDJSON)
    *chunks, last = ndjson(raw)
    assert len(chunks) == 2 and all(o["done"] is False for o in chunks)
    assert list(last) == ["error"] and last["error"]
    assert not any(o.get("done") for o in [*chunks, last])


async def test_stream_that_breaks_off_before_any_text_is_502(
    start_proxy: StartProxy, session: aiohttp.ClientSession, breaking: BreakingVLLM
) -> None:
    url = await start_proxy(backends=[{"url": breaking.url, "name": "gpu1"}])
    breaking.break_after = 1  # only the role chunk: nothing was written to the client yet
    status, ctype, raw = await post(url, "/api/chat", {"model": "tiny", "messages": USER, "stream": True}, session)
    assert (status, ctype) == (502, JSON)
    assert orjson.loads(raw)["error"]


async def test_stream_that_breaks_off_without_streaming_is_502(
    start_proxy: StartProxy, session: aiohttp.ClientSession, breaking: BreakingVLLM
) -> None:
    url = await start_proxy(backends=[{"url": breaking.url, "name": "gpu1"}])
    breaking.break_after = 3
    status, ctype, raw = await post(url, "/api/chat", {"model": "tiny", "messages": USER, "stream": False}, session)
    assert (status, ctype) == (502, JSON)
    assert orjson.loads(raw)["error"]


async def test_openai_stream_that_breaks_off_ends_with_an_error_event(
    start_proxy: StartProxy, session: aiohttp.ClientSession, breaking: BreakingVLLM
) -> None:
    url = await start_proxy(backends=[{"url": breaking.url, "name": "gpu1"}])
    breaking.break_after = 3
    async with session.post(url + CHAT, json={"model": "tiny", "messages": USER, "stream": True}) as r:
        assert r.status == 200
        raw = await r.read()
    events = [b[6:] for b in raw.strip().split(b"\n\n")]
    assert events[-1] == b"[DONE]"
    assert "error" in orjson.loads(events[-2])


# -- the client hangs up ----------------------------------------------------------------------


async def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/api/chat", {"model": "tiny", "messages": USER, "stream": True}, id="chat-stream"),
        pytest.param("/api/chat", {"model": "tiny", "messages": USER, "stream": False}, id="chat-no-stream"),
        pytest.param("/api/generate", {"model": "tiny", "prompt": "hi", "stream": True}, id="generate-stream"),
        pytest.param("/api/generate", {"model": "tiny", "prompt": "hi", "raw": True, "stream": False}, id="raw-no-stream"),
        pytest.param(CHAT, {"model": "tiny", "messages": USER, "stream": True}, id="openai-stream"),
    ],
)
async def test_client_hang_up_aborts_the_vllm_stream(base_url: str, fake: FakeVLLM, path: str, body: dict[str, Any]) -> None:
    fake.stall = True
    client = aiohttp.ClientSession()
    call = asyncio.ensure_future(client.post(base_url + path, json=body))
    try:
        async with asyncio.timeout(2):
            await fake.stall_started.wait()
        assert fake.active == 1
    finally:
        call.cancel()
        await client.close()
    assert await wait_until(lambda: fake.aborted == 1 and fake.active == 0, 1.0), (fake.aborted, fake.active)


async def test_client_hang_up_after_some_tokens_aborts_the_vllm_stream(base_url: str, fake: FakeVLLM) -> None:
    fake.token_delay = 0.1
    async with aiohttp.ClientSession() as client:
        response = await client.post(base_url + "/api/chat", json={"model": "tiny", "messages": USER})
        try:
            first = await response.content.readline()
            assert orjson.loads(first)["message"]["content"] == "Hello"
            assert fake.active == 1
        finally:
            response.close()  # hang up mid-stream
    assert await wait_until(lambda: fake.aborted == 1 and fake.active == 0, 1.0), (fake.aborted, fake.active)


async def test_proxy_keeps_serving_after_a_hang_up(base_url: str, fake: FakeVLLM, session: aiohttp.ClientSession) -> None:
    fake.stall = True
    client = aiohttp.ClientSession()
    call = asyncio.ensure_future(client.post(base_url + "/api/chat", json={"model": "tiny", "messages": USER}))
    async with asyncio.timeout(2):
        await fake.stall_started.wait()
    call.cancel()
    await client.close()
    assert await wait_until(lambda: fake.active == 0, 1.0)
    fake.stall = False
    status, _, raw = await post(base_url, "/api/chat", {"model": "tiny", "messages": USER, "stream": False}, session)
    assert status == 200
    assert orjson.loads(raw)["message"]["content"] == "Hello, world!"


# -- pooled connections the backend closed ------------------------------------------------------


async def test_idle_connection_closed_by_the_backend_does_not_fail_the_next_request(
    start_proxy: StartProxy, session: aiohttp.ClientSession
) -> None:
    backend = BreakingVLLM({"tiny": Model()})
    backend.keepalive_timeout = 0.2  # uvicorn closes idle keep-alive connections (5 s in vLLM)
    await backend.start()
    try:
        url = await start_proxy(backends=[{"url": backend.url, "name": "gpu1"}])
        for _ in range(3):
            status, _, raw = await post(url, "/api/chat", {"model": "tiny", "messages": USER, "stream": False}, session)
            assert status == 200, raw
            await asyncio.sleep(0.4)  # longer than the backend's idle timeout
    finally:
        await backend.stop()


@pytest.mark.parametrize("reset", [pytest.param(False, id="fin"), pytest.param(True, id="rst")])
@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/api/chat", {"model": "tiny", "messages": USER, "stream": True}, id="chat-stream"),
        pytest.param("/api/generate", {"model": "tiny", "prompt": "hi", "stream": False}, id="generate"),
        pytest.param("/api/embed", {"model": "minilm", "input": "a"}, id="embed"),
        pytest.param(CHAT, {"model": "tiny", "messages": USER}, id="openai"),
    ],
)
async def test_pooled_connection_closed_as_it_is_reused_is_retried(
    start_proxy: StartProxy, session: aiohttp.ClientSession, fake: FakeVLLM, path: str, body: dict[str, Any], reset: bool
) -> None:
    forwarder = DroppingForwarder(int(fake.url.rsplit(":", 1)[1]), reset=reset)
    await forwarder.start()
    try:
        url = await start_proxy(backends=[{"url": forwarder.url, "name": "gpu1"}])
        for _ in range(3):
            status, _, raw = await post(url, path, body, session)
            assert status == 200, raw
            if path == "/api/chat":
                assert_final(ndjson(raw)[-1], usage_of(fake))
        # the scenario happened to every request: each reused a pooled connection that was closed
        assert forwarder.dropped >= 3
    finally:
        await forwarder.stop()


async def test_stream_that_ends_without_finishing_ends_with_an_error_line(
    start_proxy: StartProxy, session: aiohttp.ClientSession, breaking: BreakingVLLM
) -> None:
    url = await start_proxy(backends=[{"url": breaking.url, "name": "gpu1"}])
    breaking.break_after, breaking.break_cleanly = 3, True  # a clean HTTP end, but no finish chunk
    status, ctype, raw = await post(url, "/api/chat", {"model": "tiny", "messages": USER, "stream": True}, session)
    assert (status, ctype) == (200, NDJSON)
    *chunks, last = ndjson(raw)
    assert [c["message"]["content"] for c in chunks] == ["Hello", ","]
    assert list(last) == ["error"] and last["error"]


@pytest.mark.parametrize("finish", ["abort", "error"])
async def test_vllm_aborting_the_request_is_an_error_not_done(client: TestClient, fake: FakeVLLM, finish: str) -> None:
    fake.reply.finish = finish
    status, ctype, raw = await post(client, "/api/chat", {"model": "tiny", "messages": USER, "stream": True})
    assert (status, ctype) == (200, NDJSON)
    objects = ndjson(raw)
    assert list(objects[-1]) == ["error"] and finish in objects[-1]["error"]
    assert not any(o.get("done") for o in objects)
    status, ctype, raw = await post(client, "/api/chat", {"model": "tiny", "messages": USER, "stream": False})
    assert 400 <= status < 600 and ctype == JSON
    assert finish in orjson.loads(raw)["error"]


async def test_length_finish_is_done_reason_length(client: TestClient, fake: FakeVLLM) -> None:
    fake.reply.finish = "length"
    status, _, raw = await post(client, "/api/generate", {"model": "tiny", "prompt": "hi"})
    assert status == 200
    assert_final(ndjson(raw)[-1], usage_of(fake), done_reason="length")


async def test_unknown_model_is_502_quickly_while_another_backend_hangs(
    start_proxy: StartProxy, session: aiohttp.ClientSession, fake: FakeVLLM, silent: SilentServer
) -> None:
    clock = FakeTimers()
    url = await start_proxy(backends=[{"url": fake.url, "name": "fake"}, {"url": silent.url, "name": "stuck"}],
                            timeouts={"discovery": 0.3}, timers=clock.timers())  # fmt: skip
    await clock.advance(1.05)  # the last discovery is stale now: the unknown name triggers a fresh one
    started = time.monotonic()
    status, _, raw = await post(url, "/api/chat", {"model": "nope", "messages": USER}, session)
    # The hanging backend may serve "nope": its outage, not Ollama's 404 (clients would pull).
    assert status == 502
    assert orjson.loads(raw)["error"].startswith("vLLM backend stuck (")
    assert time.monotonic() - started < 1.5
    status, _, _ = await post(url, "/api/chat", {"model": "tiny", "messages": USER, "stream": False}, session)
    assert status == 200  # the healthy backend keeps serving
