"""Issue-3 features over real sockets: fill-in-the-middle, configured capabilities."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC
from typing import Any

import pytest

from proxy.app import create_app
from proxy.config import from_mapping
from tests.fakes.timers import FakeTimers
from tests.fakes.vllm import FakeVLLM, Model


@pytest.fixture
async def coder() -> AsyncIterator[FakeVLLM]:
    server = FakeVLLM({"Qwen/Qwen2.5-Coder-1.5B": Model(), "plain": Model()})
    await server.start()
    yield server
    await server.stop()


async def proxy(aiohttp_client: Any, backend: FakeVLLM, **extra: Any) -> Any:
    config = from_mapping({"backends": [{"url": backend.url, "name": "b"}], **extra})
    return await aiohttp_client(create_app(config))


async def test_suffix_on_a_recognised_coder_model_is_a_fim_completion(aiohttp_client: Any, coder: FakeVLLM) -> None:
    client = await proxy(aiohttp_client, coder)
    shown = await (await client.post("/api/show", json={"model": "qwen/qwen2.5-coder-1.5b"})).json()
    assert "insert" in shown["capabilities"]
    reply = await client.post("/api/generate", json={"model": "qwen/qwen2.5-coder-1.5b", "prompt": "def add(a, b):\n",
                                                     "suffix": "\n    return c\n", "stream": False})  # fmt: skip
    assert reply.status == 200
    body = await reply.json()
    assert body["response"] == "Hello, world!" and body["done_reason"] == "stop"
    sent = coder.last("/v1/completions")
    assert sent["prompt"] == "<|fim_prefix|>def add(a, b):\n<|fim_suffix|>\n    return c\n<|fim_middle|>"


async def test_suffix_on_a_model_without_insert_is_ollamas_error(aiohttp_client: Any, coder: FakeVLLM) -> None:
    client = await proxy(aiohttp_client, coder)
    reply = await client.post("/api/generate", json={"model": "plain", "prompt": "a", "suffix": "b"})
    assert reply.status == 400
    assert await reply.json() == {"error": "registry.ollama.ai/library/plain:latest does not support insert"}


async def test_configured_fim_and_capabilities(aiohttp_client: Any, coder: FakeVLLM) -> None:
    models = [{"name": "mycoder:7b", "backend": "b", "served": "plain", "fim": "starcoder",
               "capabilities": ["completion", "thinking"]}]  # fmt: skip
    client = await proxy(aiohttp_client, coder, models=models)
    shown = await (await client.post("/api/show", json={"model": "mycoder:7b"})).json()
    assert shown["capabilities"] == ["completion", "thinking", "insert"]
    reply = await client.post("/api/generate", json={"model": "mycoder:7b", "prompt": "x", "suffix": "y", "stream": False})
    assert reply.status == 200
    assert coder.last("/v1/completions")["prompt"] == "<fim_prefix>x<fim_suffix>y<fim_middle>"
    # Configured capabilities are authoritative: no tools listed, so tools are refused.
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    refused = await client.post("/api/chat", json={"model": "mycoder:7b", "messages": [{"role": "user", "content": "x"}],
                                                   "tools": tools})  # fmt: skip
    assert refused.status == 400
    error = (await refused.json())["error"]
    assert error.startswith("registry.ollama.ai/library/mycoder:7b does not support tools: list tools in its capabilities")


async def test_think_on_a_model_configured_without_thinking(aiohttp_client: Any, coder: FakeVLLM) -> None:
    models = [{"name": "nothink", "backend": "b", "served": "plain", "capabilities": ["completion"]}]
    client = await proxy(aiohttp_client, coder, models=models)
    reply = await client.post(
        "/api/chat", json={"model": "nothink", "messages": [{"role": "user", "content": "x"}], "think": True}
    )
    assert reply.status == 400
    assert await reply.json() == {"error": '"nothink" does not support thinking'}


@pytest.fixture
async def sleepy(aiohttp_client: Any, coder: FakeVLLM) -> Any:
    config = from_mapping(
        {"backends": [{"url": coder.url, "name": "b", "sleep_mode": True, "sleep_level": 2}], "keep_alive": "5m"}
    )
    return await aiohttp_client(create_app(config))


CHAT = {"model": "plain", "messages": [{"role": "user", "content": "x"}], "stream": False}


async def test_unload_puts_a_sleep_mode_backend_to_sleep_and_the_next_request_wakes_it(sleepy: Any, coder: FakeVLLM) -> None:
    unloaded = await (await sleepy.post("/api/generate", json={"model": "plain", "keep_alive": 0})).json(content_type=None)
    assert unloaded["done_reason"] == "unload"
    assert coder.sleeping and coder.sleep_calls == ["sleep?level=2"]
    assert (await (await sleepy.get("/api/ps")).json())["models"] == []  # unloaded models are not listed
    reply = await sleepy.post("/api/chat", json=CHAT)
    assert reply.status == 200 and (await reply.json())["message"]["content"] == "Hello, world!"
    assert coder.sleep_calls == ["sleep?level=2", "wake_up"] and not coder.sleeping


async def test_ps_reports_the_keep_alive_timer(sleepy: Any, coder: FakeVLLM) -> None:
    from datetime import datetime

    await sleepy.post("/api/chat", json={**CHAT, "keep_alive": "10m"})
    models = (await (await sleepy.get("/api/ps")).json())["models"]
    expiry = {m["name"]: datetime.fromisoformat(m["expires_at"]) for m in models}
    left = (expiry["plain:latest"] - datetime.now(UTC)).total_seconds()
    assert 590 < left <= 600


@pytest.mark.parametrize(
    "keep_alive",
    [pytest.param(1e18, id="1e18 seconds"), pytest.param(10**30, id="10**30 seconds"), pytest.param(-1, id="forever"),
     pytest.param("2562047h", id="Go's longest duration string")],
)  # fmt: skip
async def test_ps_shows_a_huge_keep_alive_as_ollamas_longest(sleepy: Any, keep_alive: Any) -> None:
    from datetime import datetime

    reply = await sleepy.post("/api/chat", json={**CHAT, "keep_alive": keep_alive})
    assert reply.status == 200
    ps = await sleepy.get("/api/ps")
    assert ps.status == 200
    expiry = {m["name"]: datetime.fromisoformat(m["expires_at"]) for m in (await ps.json())["models"]}
    years = (expiry["plain:latest"] - datetime.now(UTC)).days / 365.25
    assert 291.9 < years < 292.5  # Go's time.Duration maximum, as Ollama shows keep_alive -1


async def test_a_duration_string_past_gos_longest_is_gos_400(sleepy: Any) -> None:
    reply = await sleepy.post("/api/chat", json={**CHAT, "keep_alive": "3000000h"})
    assert (reply.status, await reply.json()) == (400, {"error": 'time: invalid duration "3000000h"'})


async def test_keep_alive_timer_sleeps_an_idle_backend_when_it_runs_out(aiohttp_client: Any, coder: FakeVLLM) -> None:
    clock = FakeTimers()
    config = from_mapping({"backends": [{"url": coder.url, "name": "b", "sleep_mode": True}]})
    client = await aiohttp_client(create_app(config, timers=clock.timers()))
    await client.post("/api/chat", json={**CHAT, "keep_alive": "5m"})
    await clock.advance(299)  # the keep-alive loop ticks every second; the model stays loaded
    assert await until(lambda: bool(coder.sleep_calls), within_s=0.2) is False
    await clock.advance(2)
    assert await until(lambda: coder.sleeping)
    assert coder.sleep_calls == ["sleep?level=1"]
    assert (await (await client.get("/api/ps")).json())["models"] == []


async def until(condition: Callable[[], bool], within_s: float = 2.0) -> bool:
    """Whether the condition holds within a short real wait (the proxy's calls to the fake take I/O)."""
    for _ in range(int(within_s / 0.01)):
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


async def test_without_sleep_mode_keep_alive_zero_leaves_the_model_loaded(aiohttp_client: Any, coder: FakeVLLM) -> None:
    client = await proxy(aiohttp_client, coder)
    unloaded = await (await client.post("/api/chat", json={"model": "plain", "messages": [], "keep_alive": 0})).json(
        content_type=None
    )
    assert unloaded["done_reason"] == "unload"
    assert coder.sleep_calls == []
    names = [m["name"] for m in (await (await client.get("/api/ps")).json())["models"]]
    assert "plain:latest" in names


async def test_embed_on_a_chat_model_is_a_capability_error(aiohttp_client: Any, coder: FakeVLLM) -> None:
    client = await proxy(aiohttp_client, coder)
    for path, body in (("/api/embed", {"model": "plain", "input": "x"}), ("/api/embeddings", {"model": "plain", "prompt": "x"})):
        reply = await client.post(path, json=body)
        assert reply.status == 400
        assert await reply.json() == {"error": '"plain" does not support embeddings'}


async def test_openai_passthrough_drops_an_empty_tools_list(aiohttp_client: Any, coder: FakeVLLM) -> None:
    client = await proxy(aiohttp_client, coder)
    reply = await client.post("/v1/chat/completions", json={"model": "plain", "messages": [{"role": "user", "content": "x"}],
                                                            "tools": []})  # fmt: skip
    assert reply.status == 200
    assert "tools" not in coder.last("/v1/chat/completions")
