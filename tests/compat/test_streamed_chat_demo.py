"""A streamed chat through the official ollama-python client, as an application writes it."""

from __future__ import annotations

import ollama
import pytest
from aiohttp.test_utils import TestServer

pytestmark = pytest.mark.compat


async def test_streamed_chat(proxy_server: TestServer) -> None:
    async with ollama.AsyncClient(host=str(proxy_server.make_url(""))) as client:
        stream = await client.chat(model="tiny", messages=[{"role": "user", "content": "Say hello"}], stream=True)
        pieces = []
        last = None
        async for chunk in stream:
            print(chunk.message.content, end="", flush=True)
            pieces.append(chunk.message.content or "")
            last = chunk
    print()
    assert "".join(pieces) == "Hello, world!"
    assert last is not None and last.done is True and last.done_reason == "stop"
