"""Failover over real sockets, the cases around the first byte: a stream that breaks after
it counts against the backend's health but is never resent; the follow-up ``/tokenize`` of
``/api/generate`` goes to the replica that generated; a connection that is never accepted
(connect timeout) fails over like a refused one; sleep-mode replicas are failover targets."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from tests.fakes.vllm import FakeVLLM

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": False}


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
