"""GET /metrics over real sockets, parsed with prometheus-client's own parser: what a scrape
shows after real requests (streamed and not, an error, the /v1 passthrough), in flight
while a stream runs, failovers and backend health, managed-model loads; and the real CLI
with ``metrics_listen`` and two workers, whose counts a scrape of either worker sums."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.app import create_app
from proxy.config import from_mapping
from tests.fakes.launcher import FakeLauncher
from tests.fakes.vllm import FakeVLLM
from tests.integration.helpers import REPO, children, free_port, listening, serve, stop, usage_of, wait_until_up
from tests.scrape import Scrape, grew

CHAT: dict[str, Any] = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}


async def scrape(session: aiohttp.ClientSession, url: str) -> Scrape:
    async with session.get(url) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return Scrape(await response.text())


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, bytes]:
    async with session.post(url, json=body) as response:
        return response.status, await response.read()


async def test_a_scrape_counts_real_requests_their_first_tokens_and_tokens(
    start_proxy: Any, fake: FakeVLLM, session: aiohttp.ClientSession
) -> None:
    base = await start_proxy(backends=[{"url": fake.url, "name": "metered"}])
    before = await scrape(session, f"{base}/metrics")
    prompt = output = 0
    requests: list[tuple[str, dict[str, Any]]] = [
        ("/api/chat", CHAT),
        ("/api/chat", {**CHAT, "stream": False}),
        ("/api/generate", {"model": "tiny", "prompt": "hi", "stream": False}),
    ]
    for path, body in requests:
        status, _ = await post(session, f"{base}{path}", body)
        assert status == 200
        used = usage_of(fake, fake.requests[-1][0])
        prompt, output = prompt + used[0], output + used[1]
    openai = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
    status, raw = await post(session, f"{base}/v1/chat/completions", openai)
    assert status == 200
    usage = orjson.loads(raw)["usage"]
    prompt, output = prompt + usage["prompt_tokens"], output + usage["completion_tokens"]
    status, raw = await post(session, f"{base}/v1/chat/completions", {**openai, "stream": True})
    assert status == 200 and raw.endswith(b"data: [DONE]\n\n")
    assert (await post(session, f"{base}/api/chat", {**CHAT, "model": "no-such-model"}))[0] == 404
    assert (await session.get(f"{base}/api/tags")).status == 200
    after = await scrape(session, f"{base}/metrics")

    counted = "ollama_proxy_requests_total"
    assert grew(before, after, counted, route="/api/chat", model="tiny:latest", status="200") == 2
    assert grew(before, after, counted, route="/api/generate", model="tiny:latest", status="200") == 1
    assert grew(before, after, counted, route="/v1/chat/completions", model="tiny:latest", status="200") == 2
    assert grew(before, after, counted, route="/api/chat", model="other", status="404") == 1  # unknown: bounded
    assert grew(before, after, counted, route="/api/tags", model="", status="200") == 1
    assert not [k for k in after.values if k[0] == counted and ("model", "no-such-model") in k[1]]
    # First tokens: both /api/chat, /api/generate (stream false is read as a stream) and the SSE stream.
    ttft = "gen_ai_server_time_to_first_token_seconds_count"
    assert grew(before, after, ttft, model="tiny:latest", backend="metered") == 4
    assert grew(before, after, "gen_ai_server_time_per_output_token_seconds_count", model="tiny:latest") == 3
    assert grew(before, after, "gen_ai_server_request_duration_seconds_count", route="/api/chat", model="tiny:latest") == 2
    # Tokens as vLLM counted them, for the four replies that carry usage (the SSE stream was not asked for it).
    assert grew(before, after, "gen_ai_client_token_usage_count", model="tiny:latest", type="output") == 4
    assert grew(before, after, "gen_ai_client_token_usage_sum", model="tiny:latest", type="output") == output
    assert grew(before, after, "gen_ai_client_token_usage_sum", model="tiny:latest", type="input") == prompt
    assert after.get("ollama_proxy_inflight_requests", model="tiny:latest", backend="metered") == 0
    assert after.get("ollama_proxy_backend_up", backend="metered") == 1
    assert after.get("ollama_proxy_build_info", version=__import__("proxy").__version__) == 1


@pytest.mark.parametrize(
    ("extra", "counted", "first_token"),
    [
        pytest.param({"stream": True, "stream_options": {"include_usage": True}}, True, True, id="streamed-with-usage"),
        pytest.param(
            {"stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}},
            True,
            True,
            id="streamed-usage-in-every-chunk: the last",
        ),  # fmt: skip
        pytest.param({"stream": True}, False, True, id="streamed-without-usage"),
        pytest.param({"stream": False}, True, False, id="not-streamed: no first token"),
    ],
)
async def test_the_v1_passthrough_counts_vllms_usage(
    start_proxy: Any, fake: FakeVLLM, session: aiohttp.ClientSession, extra: dict[str, Any], counted: bool, first_token: bool
) -> None:
    base = await start_proxy(backends=[{"url": fake.url, "name": "metered-v1"}])
    before = await scrape(session, f"{base}/metrics")
    body = {"model": "tiny", "messages": [{"role": "user", "content": "count these tokens"}], **extra}
    status, raw = await post(session, f"{base}/v1/chat/completions", body)
    assert status == 200
    after = await scrape(session, f"{base}/metrics")
    prompt, output = usage_of(fake, fake.requests[-1][0])
    tokens = "gen_ai_client_token_usage_sum"
    assert grew(before, after, tokens, model="tiny:latest", type="output") == (output if counted else 0)
    assert grew(before, after, tokens, model="tiny:latest", type="input") == (prompt if counted else 0)
    ttft = "gen_ai_server_time_to_first_token_seconds_count"
    assert grew(before, after, ttft, model="tiny:latest", backend="metered-v1") == (1 if first_token else 0)


async def test_embeddings_count_their_input_tokens(start_proxy: Any, fake: FakeVLLM, session: aiohttp.ClientSession) -> None:
    base = await start_proxy(backends=[{"url": fake.url, "name": "metered"}])
    before = await scrape(session, f"{base}/metrics")
    status, raw = await post(session, f"{base}/api/embed", {"model": "minilm", "input": ["one two", "three"]})
    assert status == 200
    after = await scrape(session, f"{base}/metrics")
    tokens = orjson.loads(raw)["prompt_eval_count"]
    assert grew(before, after, "gen_ai_client_token_usage_sum", model="minilm:latest", type="input") == tokens > 0
    assert grew(before, after, "ollama_proxy_requests_total", route="/api/embed", model="minilm:latest", status="200") == 1


async def test_a_running_stream_is_in_flight_until_the_client_leaves(
    start_proxy: Any, fake: FakeVLLM, session: aiohttp.ClientSession
) -> None:
    base = await start_proxy(backends=[{"url": fake.url, "name": "busy"}])
    fake.stall = True
    task = asyncio.create_task(post(session, f"{base}/api/chat", CHAT))
    await asyncio.wait_for(fake.stall_started.wait(), 5)
    assert (await scrape(session, f"{base}/metrics")).get(
        "ollama_proxy_inflight_requests", model="tiny:latest", backend="busy"
    ) == 1
    task.cancel()
    for _ in range(100):
        now = await scrape(session, f"{base}/metrics")
        if now.get("ollama_proxy_inflight_requests", model="tiny:latest", backend="busy") == 0:
            break
        await asyncio.sleep(0.02)
    assert now.get("ollama_proxy_inflight_requests", model="tiny:latest", backend="busy") == 0
    assert now.get("ollama_proxy_requests_total", route="/api/chat", model="tiny:latest", status="499") >= 1


async def test_a_failover_is_counted_and_the_dead_backend_shows_down(start_proxy: Any, session: aiohttp.ClientSession) -> None:
    dead, alive = FakeVLLM(), FakeVLLM()
    await dead.start()
    await alive.start()
    try:
        backends = [{"url": dead.url, "name": "fo-dead"}, {"url": alive.url, "name": "fo-alive"}]
        base = await start_proxy(backends=backends, routing={"strategy": "first"})
        await dead.stop()
        before = await scrape(session, f"{base}/metrics")
        assert before.get("ollama_proxy_backend_up", backend="fo-dead") == 1
        assert (await post(session, f"{base}/api/chat", {**CHAT, "stream": False}))[0] == 200
        after = await scrape(session, f"{base}/metrics")
    finally:
        await alive.stop()
    assert grew(before, after, "ollama_proxy_failovers_total", from_backend="fo-dead", to_backend="fo-alive") == 1
    assert after.get("ollama_proxy_backend_up", backend="fo-dead") == 0
    assert after.get("ollama_proxy_backend_up", backend="fo-alive") == 1
    assert grew(before, after, "gen_ai_server_time_to_first_token_seconds_count", model="tiny:latest", backend="fo-alive") == 1
    for name in ("fo-dead", "fo-alive"):  # counted on the replica while it ran, then on none
        assert after.get("ollama_proxy_inflight_requests", model="tiny:latest", backend=name) == 0


async def test_managed_model_loads_unloads_and_failed_starts(aiohttp_client: Any, session: aiohttp.ClientSession) -> None:
    launcher = FakeLauncher(serve=True)
    models = [
        {"name": "metered:1b", "launch": {"model": "org/metered"}},
        {"name": "broken:1b", "launch": {"model": "org/broken"}},
    ]
    client = await aiohttp_client(create_app(from_mapping({"models": models}, "test"), launcher))
    url = str(client.make_url("/metrics"))
    before = await scrape(session, url)
    assert (await client.post("/api/generate", json={"model": "metered:1b"})).status == 200  # a load request
    loaded = await scrape(session, url)
    assert (await client.post("/api/generate", json={"model": "metered:1b", "keep_alive": 0})).status == 200
    launcher.fail["org/broken"] = "vLLM exited with code 1"
    assert (await client.post("/api/generate", json={"model": "broken:1b", "prompt": "hi"})).status == 500
    after = await scrape(session, url)
    assert grew(before, loaded, "ollama_proxy_model_loads_total", model="metered:1b", result="ok") == 1
    assert grew(before, loaded, "ollama_proxy_model_load_seconds_count", model="metered:1b") == 1
    assert loaded.get("ollama_proxy_model_loaded", model="metered:1b") == 1
    assert grew(before, after, "ollama_proxy_model_unloads_total", model="metered:1b", reason="unload") == 1
    assert after.get("ollama_proxy_model_loaded", model="metered:1b") == 0
    assert grew(before, after, "ollama_proxy_model_loads_total", model="broken:1b", result="failed") == 1


KEYS = {"api_keys": [{"name": "prometheus", "key": "scrape-key-1"}]}
BEARER = {"Authorization": "Bearer scrape-key-1"}


async def test_with_api_keys_a_scrape_needs_one(start_proxy: Any, fake: FakeVLLM, session: aiohttp.ClientSession) -> None:
    base = await start_proxy(backends=[{"url": fake.url, "name": "keyed"}], **KEYS)
    async with session.get(f"{base}/metrics") as anonymous:
        assert anonymous.status == 401 and "API key" in (await anonymous.json())["error"]
    async with session.get(f"{base}/metrics", headers={"Authorization": "Bearer wrong"}) as wrong:
        assert wrong.status == 401
    async with session.get(f"{base}/metrics", headers=BEARER) as keyed:
        assert keyed.status == 200 and "ollama_proxy_requests_total" in await keyed.text()


def serve_shared(tmp_path: Path, fake: FakeVLLM, workers: int, **config: Any) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(orjson.dumps({"backends": [{"url": fake.url, "name": "shared"}], **config}).decode())
    return serve("--listen", f"127.0.0.1:{port}", "--config", str(path), "--workers", str(workers)), port


async def all_listening(proc: subprocess.Popen[bytes], workers: int, *ports: int) -> None:
    for _ in range(400):
        kids = children(proc.pid)
        holders = kids | {proc.pid}  # one worker: the process itself
        if len(kids) >= workers and all(len(listening(holders, port)) >= max(workers, 1) for port in ports):
            return
        await asyncio.sleep(0.025)
    raise AssertionError("the workers did not all listen")


async def fresh_scrape(url: str) -> Scrape:
    """A scrape on a new connection (the kernel picks the worker per connection)."""
    async with aiohttp.ClientSession() as session:
        return await scrape(session, url)


@pytest.mark.parametrize("workers", [1, 2])
async def test_the_cli_on_metrics_listen_sums_every_worker(tmp_path: Path, fake: FakeVLLM, workers: int) -> None:
    metrics_port = free_port()
    proc, port = serve_shared(tmp_path, fake, workers, metrics_listen=f"127.0.0.1:{metrics_port}")
    base, metrics = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        await wait_until_up(f"{base}/api/tags", proc)
        if workers > 1:
            await all_listening(proc, workers, port, metrics_port)  # so the requests spread over both
        for _ in range(20):  # each on its own connection, so both workers get some
            async with aiohttp.ClientSession() as session:
                assert (await post(session, f"{base}/api/chat", {**CHAT, "stream": False}))[0] == 200
        async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as moved:
            assert moved.status == 404  # with metrics_listen, not on the Ollama port
            async with session.get(f"http://127.0.0.1:{metrics_port}/api/tags") as other:
                assert other.status == 404  # and nothing but /metrics on the metrics port
        for _ in range(6):  # whichever worker answers, it reports all 20
            seen = await fresh_scrape(metrics)
            assert seen.get("ollama_proxy_requests_total", route="/api/chat", model="tiny:latest", status="200") == 20
            assert seen.get("gen_ai_server_time_to_first_token_seconds_count", model="tiny:latest", backend="shared") == 20
        if workers > 1:
            await _killed_workers_leave_no_live_gauges(proc, base, metrics, fake)
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out


async def _killed_workers_leave_no_live_gauges(proc: subprocess.Popen[bytes], base: str, metrics: str, fake: FakeVLLM) -> None:
    """A stream in flight, then every worker SIGKILLed: the restarted workers report no
    request in flight (the dead ones were marked dead), and the counts stay."""
    fake.stall = True
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(post(session, f"{base}/api/chat", CHAT))
        await asyncio.wait_for(fake.stall_started.wait(), 10)
        assert (await fresh_scrape(metrics)).get("ollama_proxy_inflight_requests", model="tiny:latest", backend="shared") == 1
        old = children(proc.pid)
        for pid in old:
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(aiohttp.ClientError):
            await task
    fake.stall = False
    for _ in range(200):
        if len(children(proc.pid) - old) >= 2:
            try:
                seen = await fresh_scrape(metrics)
                break
            except aiohttp.ClientError:
                pass
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the workers were not restarted")
    assert seen.get("ollama_proxy_inflight_requests", model="tiny:latest", backend="shared") == 0
    assert seen.get("ollama_proxy_requests_total", route="/api/chat", model="tiny:latest", status="200") == 20


async def test_the_metrics_listen_address_needs_a_key_too(tmp_path: Path, fake: FakeVLLM) -> None:
    metrics_port = free_port()
    proc, port = serve_shared(tmp_path, fake, 1, metrics_listen=f"127.0.0.1:{metrics_port}", **KEYS)
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        await wait_until_up(f"http://127.0.0.1:{port}/", proc)  # `/` needs no key
        await all_listening(proc, 0, metrics_port)
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as anonymous:
                assert anonymous.status == 401
            async with session.get(url, headers=BEARER) as keyed:
                assert keyed.status == 200
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out


def test_the_cli_refuses_a_metrics_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        path = tmp_path / "config.yaml"
        path.write_text(f"backends: [{{url: 'http://127.0.0.1:9'}}]\nmetrics_listen: '127.0.0.1:{busy}'\n")
        done = subprocess.run(
            [sys.executable, "-m", "proxy", "serve", "--listen", f"127.0.0.1:{free_port()}", "--config", str(path),
             "--workers", "1"],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{busy}" in done.stderr
