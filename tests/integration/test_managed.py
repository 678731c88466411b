"""Managed models through the HTTP app over real sockets: the fake launcher's children
are fake vLLM servers, so requests really go to the process the scheduler started."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from proxy.app import create_app
from proxy.config import from_mapping
from proxy.managed import service
from proxy.managed.control import Owner
from tests.fakes.launcher import FakeLauncher
from tests.fakes.vllm import FakeVLLM
from tests.integration.helpers import ndjson

MODELS = [{"name": "alpha:1b", "launch": {"model": "org/alpha"}}, {"name": "beta:1b", "launch": {"model": "org/beta"}}]
Start = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def launcher() -> FakeLauncher:
    return FakeLauncher(serve=True)


@pytest.fixture
def start(aiohttp_client: Any, launcher: FakeLauncher) -> Start:
    async def make(**extra: Any) -> TestClient:
        data: dict[str, Any] = {"models": MODELS, "log_level": "debug", **extra}
        client: TestClient = await aiohttp_client(create_app(from_mapping(data, "test"), launcher))
        return client

    return make


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False, **extra}


async def names(client: TestClient, path: str) -> list[str]:
    return sorted(m["name"] for m in (await (await client.get(path)).json())["models"])


async def test_listed_before_running_and_started_by_the_first_request(start: Start, launcher: FakeLauncher) -> None:
    client = await start()
    assert await names(client, "/api/tags") == ["alpha:1b", "beta:1b"]
    assert await names(client, "/api/ps") == [] and launcher.launched == []
    reply = await client.post("/api/chat", json=chat("alpha:1b"))
    body = await reply.json()
    assert reply.status == 200 and body["message"]["content"] == "Hello, world!"
    assert body["load_duration"] > 0 and body["done_reason"] == "stop"
    assert [c.spec.served for c in launcher.launched] == ["alpha:1b"]
    (loaded,) = (await (await client.get("/api/ps")).json())["models"]
    assert loaded["name"] == "alpha:1b" and loaded["context_length"] == 2048 and "size_vram" in loaded
    remaining = datetime.fromisoformat(loaded["expires_at"]).timestamp() - datetime.now().timestamp()
    assert 200 < remaining <= 301  # the default keep_alive, 5 minutes
    again = await client.post("/api/chat", json=chat("ALPHA:1b", stream=True))  # matched case-insensitively, streamed
    assert ndjson(await again.read())[-1]["done"] is True and len(launcher.launched) == 1


async def test_concurrent_first_requests_start_one_process(start: Start, launcher: FakeLauncher) -> None:
    client = await start()
    replies = await asyncio.gather(*(client.post("/api/chat", json=chat("alpha:1b")) for _ in range(6)))
    assert [r.status for r in replies] == [200] * 6 and len(launcher.launched) == 1


async def test_max_loaded_one_swaps_models(start: Start, launcher: FakeLauncher) -> None:
    client = await start(max_loaded=1)
    assert (await client.post("/api/chat", json=chat("alpha:1b"))).status == 200
    assert (await client.post("/api/chat", json=chat("beta:1b"))).status == 200
    assert await names(client, "/api/ps") == ["beta:1b"]
    alpha, beta = launcher.launched
    assert alpha.stopped and not beta.stopped


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
async def test_empty_request_loads_and_keep_alive_0_unloads(start: Start, launcher: FakeLauncher, path: str) -> None:
    client = await start()
    empty: dict[str, Any] = {"model": "alpha:1b"} if path == "/api/generate" else {"model": "alpha:1b", "messages": []}
    load = await (await client.post(path, json=empty)).json(content_type=None)  # one NDJSON line
    assert load["done_reason"] == "load" and len(launcher.running()) == 1  # really started
    assert await names(client, "/api/ps") == ["alpha:1b"]
    unload = await (await client.post(path, json={**empty, "keep_alive": 0})).json(content_type=None)
    assert unload["done_reason"] == "unload"
    assert await names(client, "/api/ps") == [] and launcher.launched[0].stopped


async def test_keep_alive_forever_shows_far_expiry(start: Start) -> None:
    client = await start()
    await client.post("/api/generate", json={"model": "alpha:1b", "keep_alive": -1})
    (loaded,) = (await (await client.get("/api/ps")).json())["models"]
    assert loaded["expires_at"].startswith("23")


@pytest.mark.parametrize("keep_alive", [pytest.param(1e18, id="1e18 seconds"), pytest.param(10**30, id="10**30 seconds")])
async def test_a_huge_keep_alive_shows_as_ollamas_longest_not_an_error(start: Start, keep_alive: float) -> None:
    client = await start()
    await client.post("/api/generate", json={"model": "alpha:1b", "keep_alive": keep_alive})
    ps = await client.get("/api/ps")
    assert ps.status == 200
    (loaded,) = (await ps.json())["models"]
    assert loaded["expires_at"].startswith("23")  # ≈ 292 years ahead, as for keep_alive -1


async def test_a_failed_start_is_an_ollama_error_with_vllms_log(start: Start, launcher: FakeLauncher) -> None:
    launcher.fail["org/alpha"] = "vLLM exited with code 1"
    client = await start()
    reply = await client.post("/api/chat", json=chat("alpha:1b"))
    assert reply.status == 500
    error = (await reply.json())["error"]
    assert "vLLM could not start model 'alpha:1b'" in error and "CUDA out of memory" in error
    retry = await client.post("/api/chat", json=chat("alpha:1b"))
    assert retry.status == 503 and int(retry.headers["Retry-After"]) >= 1  # backing off, not restarting
    assert len(launcher.launched) == 1


async def test_a_crash_mid_stream_ends_it_with_an_error_line_and_the_next_request_restarts(
    start: Start, launcher: FakeLauncher
) -> None:
    client = await start()
    await client.post("/api/generate", json={"model": "alpha:1b"})
    child = launcher.launched[0]
    assert isinstance(child.server, FakeVLLM)
    child.server.token_delay = 0.5
    response = await client.post("/api/chat", json=chat("alpha:1b", stream=True))
    first = await asyncio.wait_for(response.content.readline(), 5)  # a token arrived: the stream is on
    await child.crash()
    lines = ndjson(first + await response.read())
    assert lines[0]["message"]["content"] == "Hello" and not any(line.get("done") for line in lines)
    assert lines[-1] == {"error": "the vLLM stream broke off: the connection closed early"}
    assert await names(client, "/api/ps") == []
    reply = await client.post("/api/chat", json=chat("alpha:1b"))
    assert reply.status == 200 and len(launcher.launched) == 2


async def test_ollama_stop_unloads(start: Start, launcher: FakeLauncher) -> None:
    client = await start()
    await client.post("/api/chat", json=chat("beta:1b"))
    # `ollama stop NAME` sends exactly this
    stop = await client.post("/api/generate", json={"model": "beta:1b", "prompt": "", "keep_alive": 0, "stream": False})
    assert (await stop.json())["done_reason"] == "unload" and launcher.launched[0].stopped


async def test_managed_and_discovered_models_side_by_side(start: Start, fake: FakeVLLM) -> None:
    client = await start(backends=[{"url": fake.url, "name": "fake"}])
    assert {"alpha:1b", "beta:1b", "tiny:latest"} <= set(await names(client, "/api/tags"))
    assert await names(client, "/api/ps") == sorted(["llava:latest", "minilm:latest", "tiny:latest"])
    assert (await client.post("/api/chat", json=chat("tiny"))).status == 200


async def test_openai_passthrough_starts_the_model(start: Start, launcher: FakeLauncher) -> None:
    client = await start()
    reply = await client.post("/v1/chat/completions", json={"model": "alpha:1b", "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status == 200 and (await reply.json())["model"] == "alpha:1b" and len(launcher.launched) == 1


async def test_shutdown_stops_every_child(aiohttp_server: Any, launcher: FakeLauncher) -> None:
    server = await aiohttp_server(create_app(from_mapping({"models": MODELS}, "test"), launcher))
    async with aiohttp.ClientSession() as session:
        await session.post(str(server.make_url("/api/generate")), json={"model": "alpha:1b"})
    await server.close()
    assert launcher.launched and all(c.stopped for c in launcher.launched)


async def test_several_workers_share_one_owner(aiohttp_client: Any) -> None:
    """--workers N: the supervisor owns the scheduler; every worker asks it over the
    control socket, so two workers asking at once start one process and agree on /api/ps."""
    launcher = FakeLauncher(serve=True)
    config = from_mapping({"models": MODELS, "max_loaded": 1}, "test")
    owner = Owner(lambda: service.scheduler(config, launcher))
    owner.start()
    try:
        worker_config = dataclasses.replace(config, managed_socket=owner.path)
        workers = [await aiohttp_client(create_app(worker_config)) for _ in range(2)]
        replies = await asyncio.gather(*(w.post("/api/chat", json=chat("alpha:1b")) for w in workers for _ in range(3)))
        assert [r.status for r in replies] == [200] * 6 and len(launcher.launched) == 1
        assert [await names(w, "/api/ps") for w in workers] == [["alpha:1b"], ["alpha:1b"]]
        assert (await workers[1].post("/api/chat", json=chat("beta:1b"))).status == 200  # swaps for both
        assert [await names(w, "/api/ps") for w in workers] == [["beta:1b"], ["beta:1b"]]
        stop = await workers[0].post("/api/generate", json={"model": "beta:1b", "keep_alive": 0, "stream": False})
        assert (await stop.json())["done_reason"] == "unload"
        assert await names(workers[1], "/api/ps") == []
        launcher.fail["org/alpha"] = "vLLM exited with code 1"
        await workers[0].post("/api/generate", json={"model": "alpha:1b", "keep_alive": 0})  # alpha is not running
        failed = await workers[1].post("/api/chat", json=chat("alpha:1b"))
        assert failed.status == 500 and "CUDA out of memory" in (await failed.json())["error"]
    finally:
        owner.stop()
    assert all(c.stopped for c in launcher.launched)


async def test_the_request_that_waited_for_the_start_logs_it(start: Start) -> None:
    client = await start()
    with capture_logs() as entries:
        await client.post("/api/chat", json=chat("alpha:1b"))
        await client.post("/api/chat", json=chat("alpha:1b"))
    first, second = [e for e in entries if e.get("event") == "request"]
    assert first["model_start_ms"] >= 0 and "model_start_ms" not in second
    assert any(e["event"] == "vLLM ready" and e["model"] == "alpha:1b" for e in entries)


async def test_a_fixed_max_model_len_is_known_before_the_model_runs(start: Start, launcher: FakeLauncher) -> None:
    client = await start(models=[{"name": "gamma:1b", "launch": {"model": "org/gamma", "args": "--max-model-len 4096"}}])
    show = await (await client.post("/api/show", json={"model": "gamma:1b"})).json()
    assert show["model_info"]["unknown.context_length"] == 4096 and launcher.launched == []
