"""Fair turns over real sockets: a flood from one user does not hold back another's chat,
queue timeout and bound answer 503 with Retry-After and Ollama's busy text, a client that
hangs up leaves the queue at once, a turn is held until the stream ends and moves with a
failover, the default limit comes from vLLM's /server_info, and --workers 2 keeps one
round-robin. Users are told apart by client address (127.0.0.1 / 127.0.0.2)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from aiohttp import web

from bench.fairness import MODES, scenario
from proxy.app import create_app
from proxy.config import from_mapping
from proxy.state import ADMISSION, LIVE
from proxy.timers import SYSTEM, Timers
from tests.fakes.timers import FakeTimers
from tests.fakes.vllm import FakeVLLM
from tests.integration.helpers import free_port, serve, stop, until, wait_until_up
from tests.scrape import Scrape, grew

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
BUSY = "server busy, please try again.  maximum pending requests exceeded"


def session_from(address: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, local_addr=(address, 0)))


@pytest.fixture
async def user_a() -> AsyncIterator[aiohttp.ClientSession]:
    async with session_from("127.0.0.1") as s:
        yield s


@pytest.fixture
async def user_b() -> AsyncIterator[aiohttp.ClientSession]:
    async with session_from("127.0.0.2") as s:
        yield s


@pytest.fixture
def proxy(aiohttp_server: Any, fake: FakeVLLM) -> Callable[..., Any]:
    """Start a proxy in front of ``fake`` with the backend's fair-turn keys; (URL, app)."""

    async def start(timers: Timers = SYSTEM, top: dict[str, Any] | None = None, **turns: Any) -> tuple[str, web.Application]:
        data = {"backends": [{"url": fake.url, "name": "fake", **turns}], "log_level": "debug", **(top or {})}
        app = create_app(from_mapping(data, "test"), timers=timers)
        server = await aiohttp_server(app)  # TestServer cancels handlers of clients that left, as proxy/server.py
        return str(server.make_url("")).rstrip("/"), app

    return start


def queued(app: web.Application) -> int:
    return sum(s.queued for s in app[ADMISSION].snapshot().values())


async def test_a_flood_does_not_hold_back_another_users_chat() -> None:
    result = await scenario(MODES["fair turns"])
    # B waits for at most one of A's running streams to end (~0.2 s), not for the flood (~3 s).
    assert result["flood_ttft_s"] < 6 * result["idle_ttft_s"], result
    assert result["a_streams_ended"] <= 8, result  # first come, first served would have ended ~60


async def test_a_wait_past_queue_timeout_is_503_with_retry_after(proxy: Any, fake: FakeVLLM, user_a: Any) -> None:
    timers = FakeTimers()
    base, app = await proxy(timers.timers(), max_concurrency=1, queue_timeout=30)
    fake.stall = True
    first = asyncio.create_task(user_a.post(f"{base}/api/chat", json=CHAT))
    await asyncio.wait_for(fake.stall_started.wait(), 5)
    second = asyncio.create_task(user_a.post(f"{base}/api/chat", json=CHAT))
    await until(lambda: queued(app) == 1, "the second request to queue")
    await timers.advance(29.0)
    assert not second.done()
    await timers.advance(1.0)
    response = await asyncio.wait_for(second, 5)
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert (await response.json())["error"].startswith("server busy, please try again.")
    assert app[ADMISSION].snapshot()["fake"].rejected_timeout == 1
    first.cancel()


async def test_past_max_queue_the_answer_is_ollamas_busy_error(proxy: Any, fake: FakeVLLM, user_a: Any) -> None:
    base, app = await proxy(max_concurrency=1, max_queue=1)
    fake.stall = True
    first = asyncio.create_task(user_a.post(f"{base}/api/chat", json=CHAT))
    await asyncio.wait_for(fake.stall_started.wait(), 5)
    second = asyncio.create_task(user_a.post(f"{base}/api/chat", json=CHAT))
    await until(lambda: queued(app) == 1, "the second request to queue")
    async with user_a.post(f"{base}/api/chat", json=CHAT) as third:
        assert third.status == 503
        assert third.headers["Retry-After"] == "1"
        assert await third.json() == {"error": BUSY}
    async with user_a.get(f"{base}/api/tags") as listing:  # listings never queue
        assert listing.status == 200
    first.cancel()
    second.cancel()


async def test_a_client_that_hangs_up_leaves_the_queue_at_once(proxy: Any, fake: FakeVLLM) -> None:
    base, app = await proxy(max_concurrency=1)
    fake.stall = True
    async with session_from("127.0.0.1") as holder, session_from("127.0.0.2") as leaver:
        first = asyncio.create_task(holder.post(f"{base}/api/chat", json=CHAT))
        await asyncio.wait_for(fake.stall_started.wait(), 5)
        waiting = asyncio.create_task(leaver.post(f"{base}/api/chat", json=CHAT))
        await until(lambda: queued(app) == 1, "the request to queue")
        waiting.cancel()
        await leaver.close()  # the connection goes: the handler is cancelled, the wait ends
        await until(lambda: queued(app) == 0, "the queue to empty")
        assert app[ADMISSION].snapshot()["fake"].in_flight == 1  # only the stalled one
        first.cancel()


async def test_a_turn_is_held_until_the_stream_ends(proxy: Any, fake: FakeVLLM, user_a: Any, user_b: Any) -> None:
    base, app = await proxy(max_concurrency=1)
    fake.token_delay = 0.01

    async def stream(session: aiohttp.ClientSession) -> list[dict[str, Any]]:
        async with session.post(f"{base}/api/chat", json=CHAT) as response:
            return [orjson.loads(line) for line in (await response.read()).splitlines()]

    replies = await asyncio.gather(stream(user_a), stream(user_b), stream(user_a))
    assert all(r[-1]["done"] for r in replies)
    assert fake.peak_active == 1  # never two streams on the backend at once
    snap = app[ADMISSION].snapshot()["fake"]
    assert (snap.in_flight, snap.queued, snap.waits) == (0, 0, 2)


async def test_a_failover_gives_the_turn_back_and_takes_one_on_the_replica(start_proxy: Any, user_a: Any) -> None:
    fakes = [FakeVLLM(), FakeVLLM()]
    for f in fakes:
        await f.start()
    try:
        backends = [{"url": f.url, "name": f"r{i}", "max_concurrency": 1} for i, f in enumerate(fakes)]
        config = from_mapping({"backends": backends, "routing": {"strategy": "first"}}, "test")
        app = create_app(config)
        from aiohttp.test_utils import TestServer

        server = TestServer(app)
        await server.start_server()
        base = str(server.make_url("")).rstrip("/")
        fakes[0].fail_next = (503, "engine overloaded")  # after the start-up's capability probes
        async with user_a.post(f"{base}/api/chat", json={**CHAT, "stream": False}) as response:
            assert response.status == 200
        snap = app[ADMISSION].snapshot()
        assert {name: s.in_flight for name, s in snap.items()} == {"r0": 0, "r1": 0}
        assert sum(1 for p, b in fakes[1].requests if p == "/v1/chat/completions" and b.get("max_tokens") != 1) == 1
        await server.close()
    finally:
        for f in fakes:
            await f.stop()


async def test_the_limit_defaults_to_vllms_max_num_seqs(proxy: Any, fake: FakeVLLM, user_a: Any) -> None:
    fake.dev_mode, fake.max_num_seqs, fake.stall = True, 2, True
    base, app = await proxy()
    await until(lambda: app[LIVE].current.backends["fake"].max_num_seqs == 2, "the backend's /server_info to be read")
    tasks = [asyncio.create_task(user_a.post(f"{base}/api/chat", json=CHAT)) for _ in range(3)]
    await until(lambda: queued(app) == 1, "the third request to queue")
    assert app[ADMISSION].snapshot()["fake"].in_flight == 2
    for task in tasks:
        task.cancel()


async def test_without_server_info_the_limit_is_the_documented_default(proxy: Any, fake: FakeVLLM, user_a: Any) -> None:
    base, app = await proxy()
    async with user_a.post(f"{base}/api/chat", json={**CHAT, "stream": False}) as response:
        assert response.status == 200
    await until(lambda: fake.server_info_calls == 1, "the backend to be asked")
    async with user_a.post(f"{base}/api/chat", json={**CHAT, "stream": False}) as response:
        assert response.status == 200
    assert fake.server_info_calls == 1  # asked once, answered 404: vLLM not in dev mode
    assert app[LIVE].current.backends["fake"].max_num_seqs is None
    assert app[ADMISSION].snapshot()["fake"].in_flight == 0


async def test_workers_share_one_round_robin(fake: FakeVLLM, tmp_path: Path) -> None:
    """Two workers, one turn at a time on the backend: A's six queued requests and B's three
    alternate, whichever worker each connection landed on."""
    fake.first_token_delay = 0.4
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"backends": [{"url": fake.url, "name": "fake", "max_concurrency": 1}]}))
    proc = serve("--config", str(path), "--listen", f"127.0.0.1:{port}", "--workers", "2")
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_until_up(f"{base}/api/tags", proc)

        async def chat(session: aiohttp.ClientSession, text: str) -> int:
            body = {**CHAT, "messages": [{"role": "user", "content": text}], "stream": False}
            async with session.post(f"{base}/api/chat", json=body) as response:
                return response.status

        async with session_from("127.0.0.1") as a, session_from("127.0.0.2") as b:
            flood = [asyncio.create_task(chat(a, f"A{i}")) for i in range(6)]
            await until(lambda: fake.active >= 1, "A's first request to run")
            await asyncio.sleep(0.1)  # A's other five reach the queue (the first runs 0.4 s)
            mine = [asyncio.create_task(chat(b, f"B{i}")) for i in range(3)]
            assert await asyncio.gather(*flood, *mine) == [200] * 9
    finally:
        stop(proc)
    texts = [body["messages"][-1]["content"] for path_, body in fake.requests if path_ == "/v1/chat/completions"]
    order = "".join(t[0] for t in texts if isinstance(t, str) and t[:1] in ("A", "B"))
    assert order == "ABABABAAA", order
    assert fake.peak_active == 1


async def test_api_keys_take_turns_by_their_weight(proxy: Any, fake: FakeVLLM, user_a: aiohttp.ClientSession) -> None:
    """The key's name is the user and its ``weight`` its share of turns: with one turn at
    a time, a weight-2 key's queue gets two turns for each of a weight-1 key's."""
    keys = [{"name": "batch", "key": "k-batch-0123456789"}, {"name": "vip", "key": "k-vip-0123456789", "weight": 2}]
    base, app = await proxy(top={"api_keys": keys}, max_concurrency=1)
    fake.stall = True

    async def chat(key: str, text: str) -> int:
        body = {**CHAT, "messages": [{"role": "user", "content": text}], "stream": False}
        async with user_a.post(f"{base}/api/chat", json=body, headers={"Authorization": f"Bearer {key}"}) as response:
            await response.read()
            return response.status

    holder = asyncio.create_task(chat("k-batch-0123456789", "hold"))
    await asyncio.wait_for(fake.stall_started.wait(), 5)
    batch = [asyncio.create_task(chat("k-batch-0123456789", f"b{i}")) for i in range(3)]
    await until(lambda: queued(app) == 3, "the batch key's requests to queue")
    vip = [asyncio.create_task(chat("k-vip-0123456789", f"v{i}")) for i in range(4)]
    await until(lambda: queued(app) == 7, "the vip key's requests to queue")
    fake.stall = False
    holder.cancel()  # the held turn ends; the queues are served one at a time
    assert await asyncio.gather(*batch, *vip) == [200] * 7
    texts = [b["messages"][-1]["content"] for p, b in fake.requests if p == "/v1/chat/completions"]
    order = "".join(t[0] for t in texts if isinstance(t, str) and t[:1] in ("b", "v") and t[1:].isdigit())
    assert order == "vvbvvbb", order


async def test_waits_and_refusals_show_in_metrics(proxy: Any, fake: FakeVLLM, user_a: aiohttp.ClientSession) -> None:
    base, app = await proxy(max_concurrency=1, max_queue=1)

    async def scrape() -> Scrape:
        async with user_a.get(f"{base}/metrics") as response:
            return Scrape(await response.text())

    before = await scrape()
    fake.stall = True
    first = asyncio.create_task(user_a.post(f"{base}/api/chat", json=CHAT))
    await asyncio.wait_for(fake.stall_started.wait(), 5)
    second = asyncio.create_task(user_a.post(f"{base}/api/chat", json={**CHAT, "stream": False}))
    await until(lambda: queued(app) == 1, "the second request to queue")
    during = await scrape()
    async with user_a.post(f"{base}/api/chat", json=CHAT) as third:
        assert third.status == 503
    fake.stall = False
    first.cancel()  # its turn passes to the second
    assert (await asyncio.wait_for(second, 5)).status == 200
    after = await scrape()
    labels = {"model": "tiny:latest", "backend": "fake"}
    assert during.get("ollama_proxy_queued_requests", **labels) == 1
    assert after.get("ollama_proxy_queued_requests", **labels) == 0
    assert grew(before, after, "ollama_proxy_queue_wait_seconds_count", **labels) == 1
    assert grew(before, after, "ollama_proxy_rejected_requests_total", backend="fake", reason="queue_full") == 1
