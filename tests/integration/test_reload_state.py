"""What a reload (SIGHUP, proxy/generation.py) carries over and what it drops, over real
sockets: a removed backend's per-backend gauges leave /metrics, and a conversation stays
on the replica it was on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from proxy.app import create_app, reload
from proxy.config import from_mapping
from tests.fakes.vllm import FakeVLLM, Model, Reply
from tests.integration.helpers import until
from tests.integration.test_metrics import scrape


@pytest.fixture
async def pair() -> AsyncIterator[tuple[FakeVLLM, FakeVLLM]]:
    servers = (FakeVLLM(), FakeVLLM({"old": Model()}))
    for server in servers:
        await server.start()
    yield servers
    for server in servers:
        await server.stop()


def chats(fake: FakeVLLM) -> int:
    return sum(1 for path, body in fake.requests if path == "/v1/chat/completions" and body.get("max_tokens") != 1)


def series(text: Any, name: str, backend: str) -> list[float]:
    return [v for (n, labels), v in text.values.items() if n == name and ("backend", backend) in labels]


async def test_a_removed_backends_gauges_leave_the_scrape(aiohttp_server: Any, pair: tuple[FakeVLLM, FakeVLLM]) -> None:
    kept, gone = pair
    gone.reply, gone.token_delay = Reply(tokens=[f"t{i} " for i in range(40)]), 0.05  # 2 s of stream
    both = {"backends": [{"url": kept.url, "name": "reload-kept"}, {"url": gone.url, "name": "reload-gone"}]}
    app = create_app(from_mapping(both, "test"))
    base = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as session:
        before = await scrape(session, f"{base}/metrics")
        assert series(before, "ollama_proxy_backend_up", "reload-gone") == [1]
        body = {"model": "old", "messages": [{"role": "user", "content": "hi"}]}
        async with session.post(f"{base}/api/chat", json=body) as stream:
            await stream.content.readline()  # the stream runs on the backend about to go
            await reload(app, from_mapping({"backends": both["backends"][:1]}, "test"))
            during = await scrape(session, f"{base}/metrics")
            assert series(during, "ollama_proxy_backend_up", "reload-gone") == []  # not left at 1
            assert series(during, "ollama_proxy_backend_up", "reload-kept") == [1]
            # A request that started before the reload is still counted until it ends.
            assert series(during, "ollama_proxy_inflight_requests", "reload-gone") == [1]
            await stream.read()
        await until(lambda: gone.active == 0)
        after = await scrape(session, f"{base}/metrics")
    assert series(after, "ollama_proxy_inflight_requests", "reload-gone") == []
    assert series(after, "ollama_proxy_backend_up", "reload-gone") == []
    assert series(after, "ollama_proxy_backend_up", "reload-kept") == [1]


async def test_a_conversation_keeps_its_replica_across_a_reload(aiohttp_server: Any) -> None:
    fast, slow = FakeVLLM(), FakeVLLM()
    slow.head_delay = 0.2  # its latency is higher: between equal loads the router prefers `fast`
    fast.serve_metrics = slow.serve_metrics = False  # the load is the proxy's own count, never a stale scrape
    for server in (fast, slow):
        server.reply, server.token_delay = Reply(tokens=[f"t{i} " for i in range(20)]), 0.05  # 1 s streams
    for server in (fast, slow):
        await server.start()
    try:
        config = {"backends": [{"url": fast.url, "name": "fast"}, {"url": slow.url, "name": "slow"}]}
        app = create_app(from_mapping(config, "test"))
        base = str((await aiohttp_server(app)).make_url("")).rstrip("/")
        chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}

        async def turn(session: aiohttp.ClientSession, chat_id: str) -> None:
            async with session.post(f"{base}/api/chat", json={**chat, "stream": False},
                                    headers={"X-OpenWebUI-Chat-Id": chat_id}) as reply:  # fmt: skip
                assert reply.status == 200

        async with aiohttp.ClientSession() as session:
            other = {**chat, "messages": [{"role": "user", "content": "another conversation"}]}
            async with session.post(f"{base}/api/chat", json=chat) as one, session.post(f"{base}/api/chat", json=other) as two:
                await one.content.readline(), await two.content.readline()  # one on each: both latencies known
                assert fast.active == slow.active == 1
                await one.read(), await two.read()
            slow.token_delay = 0.0
            async with session.post(f"{base}/api/chat", json=chat, headers={"X-OpenWebUI-Chat-Id": "hold"}) as hold:
                await hold.content.readline()  # on `fast` (equal loads, lower latency)
                assert fast.active == 1
                await turn(session, "c1")  # `fast` is busier: the conversation starts on `slow`
                await hold.read()
            assert chats(slow) == 2
            await reload(app, from_mapping({**config, "keep_alive": "10m"}, "test"))
            await turn(session, "c1")  # equal loads again, and `fast` is quicker: only memory keeps it on `slow`
        assert chats(slow) == 3
    finally:
        for server in (fast, slow):
            await server.stop()
