"""Replicas over real sockets: two and three fake vLLMs serving the same model, the spread,
failover before the first byte, no resend after it, cool-down and recovery, a TLS backend
with a self-signed certificate, and a pooled connection the server closed."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.backend import Backend
from proxy.config import BackendConfig, Timeouts
from proxy.h1pool import Pool
from tests.fakes.timers import FakeTimers
from tests.fakes.vllm import FakeVLLM

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": False}


@pytest.fixture
async def fakes() -> AsyncIterator[list[FakeVLLM]]:
    servers = [FakeVLLM() for _ in range(3)]
    for server in servers:
        await server.start()
    yield servers
    for server in servers:
        await server.stop()


def chats(fake: FakeVLLM) -> int:
    return sum(1 for path, _ in fake.requests if path == "/v1/chat/completions" and _.get("max_tokens") != 1)


def config(fakes: list[FakeVLLM], **routing: Any) -> dict[str, Any]:
    return {"backends": [{"url": f.url, "name": f"r{i}"} for i, f in enumerate(fakes)], "routing": routing}


async def chat(session: aiohttp.ClientSession, base: str, body: dict[str, Any] = CHAT, **kw: Any) -> tuple[int, bytes]:
    async with session.post(f"{base}/api/chat", json=body, **kw) as r:
        return r.status, await r.read()


async def test_requests_spread_over_three_replicas_and_ps_names_them(start_proxy: Any, fakes: list[FakeVLLM]) -> None:
    base = await start_proxy(**config(fakes))
    async with aiohttp.ClientSession() as session:
        for i in range(30):  # 30 conversations
            assert (await chat(session, base, {**CHAT, "messages": [{"role": "user", "content": f"q{i}"}]}))[0] == 200
        async with session.get(f"{base}/api/ps") as r:
            (row,) = (await r.json())["models"]
        async with session.get(f"{base}/api/tags") as r:
            assert [m["name"] for m in (await r.json())["models"]] == ["tiny:latest"]  # one model, three replicas
    assert all(chats(f) > 0 for f in fakes), [chats(f) for f in fakes]
    assert row["backends"] == ["r0", "r1", "r2"]


async def test_a_conversation_stays_on_one_replica(start_proxy: Any, fakes: list[FakeVLLM]) -> None:
    base = await start_proxy(**config(fakes[:2]))
    async with aiohttp.ClientSession() as session:
        for _ in range(10):
            assert (await chat(session, base, headers={"X-OpenWebUI-Chat-Id": "c1"}))[0] == 200
    assert sorted(chats(f) for f in fakes[:2]) == [0, 10]


async def test_a_dead_replica_fails_over_before_the_first_byte_then_recovers(start_proxy: Any, fakes: list[FakeVLLM]) -> None:
    timers = FakeTimers()
    first, second = fakes[:2]
    base = await start_proxy(timers.timers(), **config([first, second], strategy="first", cooldown=2, probe_interval=2))
    port = int(first.url.rsplit(":", 1)[1])
    await first.stop()
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            status, raw = await chat(session, base)
            assert status == 200 and orjson.loads(raw)["message"]["content"] == "Hello, world!"
        assert chats(second) == 3  # the first failed over, the next two skipped the dead replica
        async with session.get(f"{base}/api/tags") as r:
            assert [m["name"] for m in (await r.json())["models"]] == ["tiny:latest"]  # still served by r1
        await first.start(port)
        await timers.advance(1.0)  # inside the cool-down: not probed yet
        assert (await chat(session, base))[0] == 200 and chats(first) == 0
        for _ in range(4):
            await timers.advance(0.5)  # the monitor probes GET /health once the cool-down is over
            await asyncio.sleep(0.05)
        assert (await chat(session, base))[0] == 200
    assert chats(first) == 1  # back in: the "first" strategy prefers it again


async def test_no_resend_after_the_first_byte(start_proxy: Any, fakes: list[FakeVLLM]) -> None:
    for fake in fakes[:2]:
        fake.midstream_error = "engine died"
    base = await start_proxy(**config(fakes[:2]))
    async with aiohttp.ClientSession() as session:
        status, raw = await chat(session, base, {**CHAT, "stream": True})
    lines = [orjson.loads(line) for line in raw.splitlines()]
    assert status == 200 and "engine died" in lines[-1]["error"]
    assert chats(fakes[0]) + chats(fakes[1]) == 1  # the client got the error line, not a second generation


async def test_every_replica_down_is_a_502_naming_them(start_proxy: Any, fakes: list[FakeVLLM]) -> None:
    base = await start_proxy(**config(fakes[:2]))
    for fake in fakes[:2]:
        await fake.stop()
    async with aiohttp.ClientSession() as session:
        status, raw = await chat(session, base)
    assert status == 502 and (b"r0" in raw or b"r1" in raw)


def self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)  # fmt: skip
    return cert, key


async def test_an_https_backend_with_a_self_signed_certificate(start_proxy: Any, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    fake = FakeVLLM()
    await fake.start(ssl_context=context)
    try:
        trusted = await start_proxy(backends=[{"url": fake.url, "name": "tls", "ca_file": str(cert)}])
        untrusted = await start_proxy(backends=[{"url": fake.url, "name": "tls"}], models=[
            {"name": "pinned", "backend": "tls", "served": "tiny", "capabilities": ["completion"]}])  # fmt: skip
        async with aiohttp.ClientSession() as session:
            for _ in range(2):  # the second on the pooled TLS connection
                status, raw = await chat(session, trusted, {**CHAT, "stream": True})
                assert status == 200 and b"Hello" in raw
            status, raw = await chat(session, untrusted, {**CHAT, "model": "pinned"})
        assert status == 502 and b"TLS handshake failed: CERTIFICATE_VERIFY_FAILED" in raw
    finally:
        await fake.stop()


async def test_a_pooled_connection_closed_by_the_server_is_retried_on_a_fresh_one() -> None:
    """A server that answers one request per connection and keeps it open, then closes it
    on the next request without answering (a server closing an idle connection)."""
    connections: list[asyncio.StreamWriter] = []
    body = orjson.dumps({"data": [{"id": "tiny"}]})
    reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(reply)
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")  # the next request on this connection...
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()  # ...closed unanswered

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = Pool(clock=lambda: 0.0)
    backend = Backend(BackendConfig(url=f"http://127.0.0.1:{port}", name="raw"), Timeouts(), pool)
    try:
        assert await backend.list_models() == [{"id": "tiny"}]
        assert pool.idle_count() == 1
        assert await backend.list_models() == [{"id": "tiny"}]  # pooled, refused, resent fresh
        assert len(connections) == 2 and backend.health.up
    finally:
        pool.close()
        for writer in connections:
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()


async def test_an_idle_connection_past_four_seconds_is_not_reused() -> None:
    now = [0.0]
    connections: list[asyncio.StreamWriter] = []
    body = b'{"data": []}'
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = Pool(clock=lambda: now[0])
    backend = Backend(BackendConfig(url=f"http://127.0.0.1:{port}", name="raw"), Timeouts(), pool)
    try:
        await backend.list_models()
        now[0] = 3.9
        await backend.list_models()
        assert len(connections) == 1  # reused within vLLM's 5 s keep-alive
        now[0] = 3.9 + 4.0
        await backend.list_models()
        assert len(connections) == 2  # too old: a fresh connection
    finally:
        pool.close()
        for writer in connections:
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
