"""Failover over real sockets, the cases around the first byte: a stream that breaks after
it counts against the backend's health but is never resent; the follow-up ``/tokenize`` of
``/api/generate`` goes to the replica that generated; a connection that is never accepted
(connect timeout) fails over like a refused one; sleep-mode replicas are failover targets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.backend import AsyncBody, Backend
from proxy.config import BackendConfig, Timeouts
from proxy.errors import ProxyError
from proxy.h1pool import Pool
from tests.fakes.raw import END, HELLO, ROLE, SSE_HEAD, STOP, RawBackend, Step, chunk, sse
from tests.fakes.timers import FakeTimers
from tests.fakes.vllm import FakeVLLM

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": False}
BROKEN_AFTER_FIRST_BYTE: list[Step] = [SSE_HEAD, chunk(sse(ROLE, HELLO)), 0.02]  # then the connection drops


@pytest.fixture
async def fakes() -> AsyncIterator[list[FakeVLLM]]:
    servers = [FakeVLLM() for _ in range(2)]
    for server in servers:
        await server.start()
    yield servers
    for server in servers:
        await server.stop()


def paths(fake: FakeVLLM, path: str) -> int:
    return sum(1 for p, body in fake.requests if p == path and body.get("max_tokens") != 1)


def config(urls: list[str], **routing: Any) -> dict[str, Any]:
    return {"backends": [{"url": u, "name": f"r{i}"} for i, u in enumerate(urls)], "routing": routing}


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, bytes]:
    async with session.post(url, json=body) as r:
        return r.status, await r.read()


async def test_generate_tokenizes_its_context_on_the_replica_that_served(start_proxy: Any, fakes: list[FakeVLLM]) -> None:
    """No token ids in the reply: ``context`` comes from ``/tokenize``, asked of the
    replica that generated after failing over, not of the one that failed."""
    first, second = fakes
    for fake in fakes:
        fake.token_ids = False
    base = await start_proxy(**config([first.url, second.url], strategy="first"))
    first.fail_next = (503, "engine overloaded")
    async with aiohttp.ClientSession() as session:
        status, raw = await post(session, f"{base}/api/generate", {"model": "tiny", "prompt": "hi", "stream": False})
    assert status == 200, raw
    reply = orjson.loads(raw)
    assert reply["response"] == "Hello, world!" and reply["context"]
    assert (paths(first, "/v1/chat/completions"), paths(second, "/v1/chat/completions")) == (1, 1)  # failed over
    assert (paths(first, "/tokenize"), paths(second, "/tokenize")) == (0, 1)


def blackhole(port: int) -> tuple[socket.socket, socket.socket]:
    """Make ``port`` a host whose connections are never accepted: a listening socket with
    a backlog of 0 whose one queue slot is taken, so the kernel drops every further SYN and
    a connect hangs until its timeout (as with a dead host that drops packets)."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(0)
    return server, socket.create_connection(("127.0.0.1", port))


async def test_a_connect_timeout_fails_over_and_takes_the_backend_out(start_proxy: Any, fakes: list[FakeVLLM]) -> None:
    dead, good = fakes
    data = config([dead.url, good.url], strategy="first")
    data["timeouts"] = {"connect": 0.2}
    base = await start_proxy(**data)
    await dead.stop()  # discovered and healthy; now its host drops every connection attempt
    sockets = blackhole(int(dead.url.rsplit(":", 1)[1]))
    try:
        async with aiohttp.ClientSession() as session:
            began = time.monotonic()
            status, raw = await post(session, f"{base}/api/chat", CHAT)
            first = time.monotonic() - began
            assert status == 200 and orjson.loads(raw)["message"]["content"] == "Hello, world!", raw
            began = time.monotonic()
            assert (await post(session, f"{base}/api/chat", CHAT))[0] == 200
            second = time.monotonic() - began
    finally:
        for sock in sockets:
            sock.close()
    assert paths(good, "/v1/chat/completions") == 2
    assert first >= 0.2 and second < 0.2  # one connect timeout, then the backend was out


async def test_streams_broken_after_the_first_byte_take_the_backend_out_like_5xx_without_a_resend(
    start_proxy: Any, fakes: list[FakeVLLM], raw: RawBackend
) -> None:
    good = fakes[0]
    raw.script["/v1/chat/completions"] = BROKEN_AFTER_FIRST_BYTE
    data = config([raw.url, good.url], strategy="first", cooldown=60)
    data["models"] = [{"name": "tiny", "backend": ["r0", "r1"], "served": "tiny", "capabilities": ["completion"]}]
    base = await start_proxy(**data)
    async with aiohttp.ClientSession() as session:
        for n in range(1, 4):  # three in a row, as for 5xx answers
            status, body = await post(session, f"{base}/api/chat", {**CHAT, "stream": True})
            lines = [orjson.loads(line) for line in body.splitlines()]
            assert status == 200 and lines[0]["message"]["content"] == "Hello" and "broke off" in lines[-1]["error"]
            assert (len(raw.bodies("/v1/chat/completions")), paths(good, "/v1/chat/completions")) == (n, 0)  # no resend
        status, body = await post(session, f"{base}/api/chat", CHAT)
    assert status == 200 and orjson.loads(body)["message"]["content"] == "Hello, world!"
    assert (len(raw.bodies("/v1/chat/completions")), paths(good, "/v1/chat/completions")) == (3, 1)  # r0 is out


@pytest.mark.parametrize(
    ("script", "read", "failures"),
    [
        pytest.param(BROKEN_AFTER_FIRST_BYTE, True, 2, id="broken off after the head: a failure"),
        pytest.param([SSE_HEAD, chunk(sse(ROLE, HELLO, STOP, b"[DONE]")), END], True, 0, id="read to its end: a success"),
        pytest.param([SSE_HEAD, chunk(sse(ROLE)), 0.5, END], False, 1, id="closed by the proxy first: neither"),
    ],
)
async def test_how_a_stream_ends_counts_for_health(raw: RawBackend, script: list[Step], read: bool, failures: int) -> None:
    raw.script["/v1/chat/completions"] = script
    pool = Pool()
    backend = Backend(BackendConfig(url=raw.url, name="raw"), Timeouts(), pool)
    backend.health.failures = 1  # one earlier failure: a success resets the count, a failure adds one
    try:
        stream = await backend.open_stream("/v1/chat/completions", {"model": "tiny", "stream": True})
        if read:
            with contextlib.suppress(ProxyError):
                await AsyncBody(stream).read()
        stream.close()
        await asyncio.sleep(0.05)  # the connection's loss arrives after close(): it must not count
    finally:
        pool.close()
    assert backend.health.failures == failures
    assert backend.load.inflight == 0 and backend.health.up


async def test_a_sleeping_replica_takes_the_failover_woken_first_then_sleeps_again(
    start_proxy: Any, fakes: list[FakeVLLM]
) -> None:
    timers = FakeTimers()
    awake, sleeper = fakes
    data = config([awake.url, sleeper.url], strategy="first", affinity=False)
    data["backends"][1]["sleep_mode"] = True
    base = await start_proxy(timers.timers(), **data)
    sleeper.sleeping = True  # its model offloaded (POST /sleep) since start-up
    awake.fail_next = (503, "engine overloaded")
    async with aiohttp.ClientSession() as session:
        status, raw = await post(session, f"{base}/api/chat", {**CHAT, "keep_alive": "10s"})
    assert status == 200 and orjson.loads(raw)["message"]["content"] == "Hello, world!", raw
    assert sleeper.sleep_calls == ["wake_up"] and paths(sleeper, "/v1/chat/completions") == 1
    for _ in range(3):
        await timers.advance(4.0)  # its keep_alive (10 s) runs from the end of the request
        await asyncio.sleep(0.02)
    assert sleeper.sleep_calls == ["wake_up", "sleep?level=1"] and sleeper.sleeping
