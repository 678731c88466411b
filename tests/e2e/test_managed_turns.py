"""A managed model on a real vLLM-CPU started with ``--scheduling-policy priority
--max-num-seqs 2`` in its ``launch.args``: the key's priority the proxy then adds is one
vLLM accepts, and the proxy's fair-turn limit is that batch of 2.

One vLLM start (~20-40 s on 2 cores): run it under the machine's vLLM lock,
``flock /tmp/vllm.lock .venv/bin/python -m pytest tests/e2e/test_managed_turns.py``.
"""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any

import aiohttp
import pytest

from proxy.app import create_app
from proxy.config import from_mapping
from proxy.state import ADMISSION

pytestmark = pytest.mark.e2e

KEY = "batch-key-managed-0123"
CHAT = {"model": "tiny-m", "messages": [{"role": "user", "content": "Count to fifty."}]}


async def test_a_managed_vllm_gets_priorities_and_its_batch_is_the_limit(vllm_cpu: ModuleType, aiohttp_server: Any) -> None:
    common = [a for a in vllm_cpu.COMMON_ARGS if a not in ("--host", "127.0.0.1")]  # the launcher sets the host
    args = ["--max-model-len", str(vllm_cpu.MAX_MODEL_LEN), "--scheduling-policy", "priority", "--max-num-seqs", "2", *common]
    launch = {"model": str(vllm_cpu.ensure_tiny_model()), "args": args, "env": dict(vllm_cpu.SERVER_ENV)}
    config = from_mapping({"vllm_python": str(vllm_cpu.venv_python()), "load_timeout": 300, "queue_timeout": 300,
                           "models": [{"name": "tiny-m", "launch": launch}],
                           "api_keys": [{"name": "batch", "key": KEY, "priority": 5}]})  # fmt: skip
    app = create_app(config)
    server = await aiohttp_server(app)
    url = str(server.make_url("")).rstrip("/")
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}, timeout=timeout) as session:
        # The first request starts vLLM; its priority would be refused by an fcfs vLLM.
        async with session.post(f"{url}/api/chat", json={**CHAT, "stream": False, "options": {"num_predict": 4}}) as reply:
            text = await reply.text()
            assert reply.status == 200 and '"error"' not in text, text
        long = {**CHAT, "stream": False, "options": {"num_predict": 200, "temperature": 0}}
        tasks = [asyncio.create_task(session.post(f"{url}/api/chat", json=long)) for _ in range(3)]
        try:
            seen: tuple[int, int] = (0, 0)
            for _ in range(500):
                turns = app[ADMISSION].snapshot().get("tiny-m")
                seen = (turns.in_flight, turns.queued) if turns is not None else (0, 0)
                if sum(seen) == 3:
                    break
                await asyncio.sleep(0.01)
            assert seen == (2, 1)  # two generate in vLLM's batch, the third waits its turn in the proxy
            for reply in await asyncio.gather(*tasks):
                assert reply.status == 200, await reply.text()
                reply.release()
        finally:
            for task in tasks:
                task.cancel()
