"""Open WebUI sends its built-in tools with every chat. A model whose vLLM runs without a
tool parser gets Ollama's 400 naming the vLLM flags, or, with drop_unsupported_tools, an
answer without the tools (logged once per model)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from proxy.app import create_app
from proxy.config import from_mapping
from tests.fakes.launcher import FakeLauncher
from tests.fakes.vllm import FakeVLLM, Model

TOOLS = [{"type": "function", "function": {"name": "web_search", "parameters": {"type": "object", "properties": {}}}}]
FLAGS = "--enable-auto-tool-choice --tool-call-parser <parser>"
Start = Callable[..., Awaitable[str]]


@pytest.fixture
async def plain() -> AsyncIterator[FakeVLLM]:
    """A vLLM started without a tool parser (its model refuses tools), and one with."""
    server = FakeVLLM({"notools": Model(tools=False), "withtools": Model()})
    await server.start()
    yield server
    await server.stop()


def chat(model: str, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "tools": TOOLS, "stream": stream}


async def post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(f"{url}/api/chat", json=body) as reply:
        raw = await reply.read()
        if reply.content_type == "application/json":
            return reply.status, await reply.json()
        return reply.status, raw


def backend(plain: FakeVLLM, **extra: Any) -> list[dict[str, Any]]:
    return [{"url": plain.url, "name": "gpu0", **extra}]


async def test_default_is_ollamas_400_naming_the_vllm_flags(start_proxy: Start, plain: FakeVLLM) -> None:
    url = await start_proxy(backends=backend(plain))
    before = len(plain.requests)
    for stream in (False, True):
        status, body = await post(url, chat("notools", stream))
        assert status == 400
        assert body == {
            "error": f"registry.ollama.ai/library/notools:latest does not support tools: start its vLLM backend gpu0 "
            f"with {FLAGS}, or set drop_unsupported_tools: true there to answer such chats without the tools"
        }
    assert len(plain.requests) == before  # refused before anything reached vLLM


@pytest.mark.parametrize(
    ("backend_setting", "model_setting", "drops"),
    [
        pytest.param(None, True, True, id="model-entry"),
        pytest.param(True, None, True, id="backend"),
        pytest.param(True, False, False, id="model-false-wins-over-backend"),
        pytest.param(False, True, True, id="model-true-wins-over-backend"),
    ],
)  # fmt: skip
async def test_drop_unsupported_tools_per_model_and_backend(
    start_proxy: Start, plain: FakeVLLM, backend_setting: bool | None, model_setting: bool | None, drops: bool
) -> None:
    extra = {} if backend_setting is None else {"drop_unsupported_tools": backend_setting}
    entry: dict[str, Any] = {"name": "webui-model", "backend": "gpu0", "served": "notools"}
    if model_setting is not None:
        entry["drop_unsupported_tools"] = model_setting
    url = await start_proxy(backends=backend(plain, **extra), models=[entry])
    status, body = await post(url, chat("webui-model"))
    if not drops:
        assert status == 400 and "does not support tools" in body["error"]
        return
    assert status == 200 and body["message"]["content"] == "Hello, world!"
    sent = plain.last("/v1/chat/completions")
    assert "tools" not in sent and sent["messages"] == [{"role": "user", "content": "hi"}]


async def test_dropping_is_logged_once_per_model_and_models_with_a_parser_keep_their_tools(
    start_proxy: Start, plain: FakeVLLM
) -> None:
    url = await start_proxy(backends=backend(plain, drop_unsupported_tools=True))
    with capture_logs() as logs:
        for stream in (False, True, False):
            status, _ = await post(url, chat("notools", stream))
            assert status == 200
        assert (await post(url, chat("withtools")))[0] == 200
    assert plain.last("/v1/chat/completions")["tools"] == TOOLS  # the parser's model got them
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1
    assert warnings[0]["model"] == "notools:latest" and warnings[0]["backend"] == "gpu0"
    assert "drop_unsupported_tools" in warnings[0]["event"]
    requests = [e for e in logs if e["event"] == "request"]
    assert [e.get("tools_dropped", False) for e in requests] == [True, True, True, False]


async def test_managed_model_hint_names_launch_args(aiohttp_client: Any) -> None:
    models = [{"name": "alpha:1b", "launch": {"model": "org/alpha"}},
              {"name": "beta:1b", "launch": {"model": "org/beta"}, "drop_unsupported_tools": True}]  # fmt: skip
    app = create_app(from_mapping({"models": models}, "test"), FakeLauncher(serve=True))
    client = await aiohttp_client(app)
    refused = await client.post("/api/chat", json=chat("alpha:1b"))
    assert refused.status == 400
    assert (await refused.json())["error"] == (
        f"registry.ollama.ai/library/alpha:1b does not support tools: add {FLAGS} to the model's launch.args in "
        "the proxy's config.yaml, or set drop_unsupported_tools: true there to answer such chats without the tools"
    )
    answered = await client.post("/api/chat", json=chat("beta:1b"))
    assert answered.status == 200 and (await answered.json())["done"] is True
