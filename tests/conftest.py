"""Shared fixtures: a fake vLLM on a real socket and the proxy in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from proxy.app import create_app
from proxy.config import from_mapping
from tests.fakes.vllm import FakeVLLM, Model


@pytest.fixture(autouse=True)
def empty_hf_cache(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Library models are listed once their weights are in the Hugging Face cache: tests
    see an empty cache of their own, not the machine's (e2e tests keep the real one)."""
    if "e2e" not in request.keywords:
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf-cache")))


@pytest.fixture
async def fake() -> AsyncIterator[FakeVLLM]:
    server = FakeVLLM(
        {"tiny": Model(), "minilm": Model(kind="embedding", max_model_len=256), "llava": Model(vision=True, tools=False)}
    )
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def make_config(fake: FakeVLLM) -> Callable[..., Any]:
    def make(**extra: Any) -> Any:
        data = {"backends": [{"url": fake.url, "name": "fake"}], "log_level": "debug", **extra}
        return from_mapping(data, "test")

    return make


@pytest.fixture
async def proxy_server(aiohttp_server: Any, make_config: Callable[..., Any]) -> TestServer:
    server: TestServer = await aiohttp_server(create_app(make_config()))
    return server


@pytest.fixture
async def client(aiohttp_client: Any, proxy_server: TestServer) -> TestClient:
    test_client: TestClient = await aiohttp_client(proxy_server)
    return test_client
