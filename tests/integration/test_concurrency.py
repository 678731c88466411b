"""Many concurrent streams through one proxy: none is queued behind another."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson

from proxy.app import create_app
from tests.fakes.vllm import FakeVLLM
from tests.integration.helpers import NDJSON, assert_final, ndjson

STREAMS = 120  # more than aiohttp's default cap of 100 connections per session


async def test_120_concurrent_streaming_chats_all_overlap_and_complete(
    base_url: str, fake: FakeVLLM, session: aiohttp.ClientSession
) -> None:
    # 6 events per stream at 0.2 s each: every stream lasts ~1.2 s, so all 120 must be
    # open at once unless something queues them.
    fake.token_delay = 0.2

    async def chat(i: int) -> list[dict]:
        body = {"model": "tiny", "messages": [{"role": "user", "content": f"request {i}"}]}
        async with session.post(base_url + "/api/chat", data=orjson.dumps(body)) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == NDJSON
            return ndjson(await r.read())

    started = time.monotonic()
    async with asyncio.timeout(15):
        results = await asyncio.gather(*(chat(i) for i in range(STREAMS)))
    elapsed = time.monotonic() - started

    for objects in results:
        *chunks, final = objects
        assert "".join(o["message"]["content"] for o in chunks) == "Hello, world!"
        assert_final(final, (5, 4))  # "request N" is 2 words + 3; 4 tokens
    assert fake.peak_active >= 101, f"only {fake.peak_active} streams were open at once"
    assert fake.peak_active == STREAMS
    assert fake.active == 0
    assert elapsed < 6 * 0.2 * 3, f"streams were serialised: {elapsed:.1f} s"


async def test_inflight_slots_are_released_by_hang_ups_and_failures(
    aiohttp_server: Any, make_config: Any, fake: FakeVLLM, session: aiohttp.ClientSession
) -> None:
    server = await aiohttp_server(create_app(make_config(max_inflight=1)))
    url = str(server.make_url("/api/chat"))
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}

    async def ok() -> None:
        async with session.post(url, json={**body, "stream": False}) as r:
            assert r.status == 200, await r.text()

    # a client that hangs up mid-generation
    fake.stall = True
    client = aiohttp.ClientSession()
    call = asyncio.ensure_future(client.post(url, json=body))
    async with asyncio.timeout(2):
        await fake.stall_started.wait()
    call.cancel()
    await client.close()
    async with asyncio.timeout(1):
        while fake.active:
            await asyncio.sleep(0.01)
    fake.stall = False
    await ok()
    # a backend error before the first byte, and one mid-stream
    fake.fail_next = (500, "boom")
    async with session.post(url, json=body) as r:
        assert r.status == 500
    await ok()
    fake.midstream_error = "boom"
    async with session.post(url, json=body) as r:
        assert r.status == 200
        assert orjson.loads((await r.read()).splitlines()[-1]) == {"error": "boom"}
    fake.midstream_error = None
    await ok()


async def test_one_client_connection_carries_many_requests(base_url: str, fake: FakeVLLM) -> None:
    # Ollama clients keep their connection alive across streams, errors and loads.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as one:
        chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
        fake.midstream_error = "boom"
        for body, status in [
            (chat, 200),
            ({**chat, "stream": False}, 500),  # the same error, before any byte was sent
            ({"model": "nope", "messages": []}, 404),
            ({**chat, "messages": "x"}, 400),
            ({"model": "tiny", "messages": []}, 200),
        ] * 2:
            async with one.post(base_url + "/api/chat", data=orjson.dumps(body)) as r:
                assert r.status == status
                await r.read()
        async with one.get(base_url + "/api/tags") as r:
            assert r.status == 200
