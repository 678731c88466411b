"""The process model a deployment sees: the CLI with several workers on one port, and the
explicit 503 when a worker's in-flight cap is reached."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.app import create_app
from tests.fakes.vllm import FakeVLLM
from tests.integration.helpers import REPO, children, free_port, serve, wait_until_up

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}


async def test_inflight_cap_answers_503_with_ollamas_text(aiohttp_client: Any, fake: FakeVLLM, make_config: Any) -> None:
    client = await aiohttp_client(create_app(make_config(max_inflight=1)))
    fake.stall = True
    first = asyncio.create_task(client.post("/api/chat", json=CHAT))
    await asyncio.wait_for(fake.stall_started.wait(), 5)
    busy = await client.post("/api/chat", json=CHAT)
    assert busy.status == 503
    assert busy.headers["Retry-After"] == "1"
    assert await busy.json() == {"error": "server busy, please try again.  maximum pending requests exceeded"}
    listing = await client.get("/api/tags")  # listings are never capped
    assert listing.status == 200
    first.cancel()


@pytest.mark.parametrize("workers", [1, 2])
async def test_cli_serves_with_n_workers_and_stops_cleanly(fake: FakeVLLM, workers: int) -> None:
    port = free_port()
    proc = serve("--backend", fake.url, "--listen", f"127.0.0.1:{port}", "--workers", str(workers))
    try:
        await wait_until_up(f"http://127.0.0.1:{port}/api/tags", proc)
        if workers > 1:
            assert len(children(proc.pid)) >= workers
        async with aiohttp.ClientSession() as session:
            replies = await asyncio.gather(
                *(session.post(f"http://127.0.0.1:{port}/api/chat", json={**CHAT, "stream": False}) for _ in range(8))
            )
            bodies = [await r.json() for r in replies]
        assert all(b["message"]["content"] == "Hello, world!" for b in bodies)
    finally:
        kids = children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        if proc.stdout:
            proc.stdout.close()
    assert proc.returncode == 0
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{k}").exists() for k in kids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [k for k in kids if Path(f"/proc/{k}").exists()]


def test_cli_refuses_a_port_in_use() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "proxy", "serve", "--backend", "http://127.0.0.1:9", "--listen", f"127.0.0.1:{port}",
             "--workers", "1"],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
