"""Ollama library names served as managed models: a catalog name whose weights are in
the Hugging Face cache starts vLLM with the catalog's repository and flags (the fake
launcher's children are fake vLLM servers on real sockets); without weights it is
Ollama's 404 that makes `ollama run` pull."""

from __future__ import annotations

import base64
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from proxy.app import create_app
from proxy.config import from_mapping
from tests.fakes.launcher import FakeLauncher
from tests.fakes.vllm import Model

Start = Callable[..., Awaitable[TestClient]]


def cache_snapshot(repo: str, files: tuple[str, ...] = ("config.json", "model.safetensors")) -> Path:
    """A snapshot as huggingface_hub lays it out, in this test's HF_HUB_CACHE."""
    snapshot = Path(os.environ["HF_HUB_CACHE"]) / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in files:
        (snapshot / name).write_bytes(b"{}")
    return snapshot


@pytest.fixture
def launcher() -> FakeLauncher:
    return FakeLauncher(serve=True)


@pytest.fixture
def start(aiohttp_client: Any, launcher: FakeLauncher) -> Start:
    async def make(**data: Any) -> TestClient:
        client: TestClient = await aiohttp_client(create_app(from_mapping(data, "test"), launcher))
        return client

    return make


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False}


async def tags(client: TestClient) -> list[str]:
    return sorted(m["name"] for m in (await (await client.get("/api/tags")).json())["models"])


async def test_a_downloaded_library_name_starts_vllm_with_the_catalog_flags(start: Start, launcher: FakeLauncher) -> None:
    cache_snapshot("Qwen/Qwen3-8B")
    client = await start(catalog=[])
    assert await tags(client) == ["qwen3:8b"]  # only what is downloaded, as `ollama list`
    reply = await client.post("/api/chat", json=chat("qwen3"))  # the bare name is the :latest alias of qwen3:8b
    assert reply.status == 200, await reply.text()
    assert (await reply.json())["model"] == "qwen3"
    (child,) = launcher.launched
    assert child.spec.model == "Qwen/Qwen3-8B" and child.spec.env == {"HF_HUB_OFFLINE": "1"}  # weights are cached
    assert "--tool-call-parser" in child.spec.args and child.spec.args[-2:] == ("--reasoning-parser", "qwen3")
    show = await (await client.post("/api/show", json={"model": "qwen3:8b"})).json()
    assert {"tools", "thinking"} <= set(show["capabilities"])


async def test_a_library_name_not_downloaded_is_the_404_that_makes_clients_pull(start: Start, launcher: FakeLauncher) -> None:
    cache_snapshot("meta-llama/Llama-3.1-8B-Instruct", files=("config.json",))  # no weights yet
    client = await start(catalog=[])
    reply = await client.post("/api/chat", json=chat("llama3.1:8b"))
    assert reply.status == 404
    assert await reply.json() == {"error": "model 'llama3.1:8b' not found, try pulling it first"}
    unknown = await client.post("/api/chat", json=chat("no-such-model:1b"))
    assert (unknown.status, await unknown.json()) == (404, {"error": "model 'no-such-model:1b' not found"})
    assert launcher.launched == [] and await tags(client) == []


async def test_library_models_share_capacity_with_configured_ones(start: Start, launcher: FakeLauncher) -> None:
    cache_snapshot("Qwen/Qwen2.5-0.5B-Instruct")
    client = await start(models=[{"name": "alpha:1b", "launch": {"model": "org/alpha"}}], max_loaded=1)
    assert (await client.post("/api/chat", json=chat("alpha:1b"))).status == 200
    assert (await client.post("/api/chat", json=chat("qwen2.5:0.5b"))).status == 200
    alpha, qwen = launcher.launched
    assert alpha.stopped and not qwen.stopped and qwen.spec.model == "Qwen/Qwen2.5-0.5B-Instruct"
    assert sorted(m["name"] for m in (await (await client.get("/api/ps")).json())["models"]) == ["qwen2.5:0.5b"]


async def test_a_configured_name_wins_over_the_catalog(start: Start, launcher: FakeLauncher) -> None:
    cache_snapshot("Qwen/Qwen3-8B")
    client = await start(models=[{"name": "qwen3:8b", "launch": {"model": "org/my-qwen"}}])
    assert (await client.post("/api/chat", json=chat("qwen3:8b"))).status == 200
    assert [c.spec.model for c in launcher.launched] == ["org/my-qwen"]
    assert await tags(client) == ["qwen3:8b"]


async def test_without_managed_models_library_names_are_not_served(aiohttp_client: Any, launcher: FakeLauncher) -> None:
    cache_snapshot("Qwen/Qwen3-8B")
    client = await aiohttp_client(create_app(from_mapping({"backends": ["http://127.0.0.1:9"]}, "test"), launcher))
    reply = await client.post("/api/chat", json=chat("qwen3:8b"))
    assert reply.status in (404, 502) and launcher.launched == []


async def test_a_configured_system_prompt_reaches_vllm_when_the_chat_has_none(start: Start, launcher: FakeLauncher) -> None:
    client = await start(models=[{"name": "alpha:1b", "launch": {"model": "org/alpha"}, "system": "Be brief."}])
    assert (await client.post("/api/chat", json=chat("alpha:1b"))).status == 200
    (child,) = launcher.launched
    assert child.server is not None
    assert child.server.last("/v1/chat/completions")["messages"][0] == {"role": "system", "content": "Be brief."}
    own = {**chat("alpha:1b"), "messages": [{"role": "system", "content": "Mine."}, {"role": "user", "content": "hi"}]}
    assert (await client.post("/api/chat", json=own)).status == 200
    assert [m["content"] for m in child.server.last("/v1/chat/completions")["messages"]] == ["Mine.", "hi"]


async def test_a_configured_system_prompt_reaches_vllm_through_the_openai_route(start: Start, launcher: FakeLauncher) -> None:
    client = await start(models=[{"name": "alpha:1b", "launch": {"model": "org/alpha"}, "system": "Be brief."}])
    user = [{"role": "user", "content": "hi"}]
    reply = await client.post("/v1/chat/completions", json={"model": "alpha:1b", "messages": user})
    assert reply.status == 200, await reply.text()
    assert (await reply.json())["model"] == "alpha:1b"
    (child,) = launcher.launched
    assert child.server is not None
    sent = child.server.last("/v1/chat/completions")["messages"]
    assert sent == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    own = [{"role": "system", "content": "Mine."}, *user]
    assert (await client.post("/v1/chat/completions", json={"model": "alpha:1b", "messages": own})).status == 200
    assert [m["content"] for m in child.server.last("/v1/chat/completions")["messages"]] == ["Mine.", "hi"]
    streamed = await client.post("/v1/chat/completions", json={"model": "alpha:1b", "messages": user, "stream": True})
    assert streamed.status == 200 and b"data: [DONE]" in await streamed.read()
    assert child.server.last("/v1/chat/completions")["messages"][0] == {"role": "system", "content": "Be brief."}


PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(24)).decode()


@pytest.mark.parametrize(
    ("config", "name", "served", "repo"),
    [
        pytest.param({"catalog": []}, "gemma3:4b", "gemma3:4b", "google/gemma-3-4b-it", id="library name"),
        pytest.param({"models": [{"name": "team-gemma", "launch": {"model": "google/gemma-3-12b-it"}}]}, "team-gemma",
                     "team-gemma", "google/gemma-3-12b-it", id="configured on a catalog repo, as migrate writes it"),
    ],
)  # fmt: skip
async def test_a_catalog_model_that_takes_images_reports_vision_and_gets_them(
    start: Start, launcher: FakeLauncher, config: dict[str, Any], name: str, served: str, repo: str
) -> None:
    cache_snapshot(repo)
    launcher.models = {served: Model(vision=True, tools=False)}  # the fake vLLM refuses images otherwise
    client = await start(**config)
    show = await (await client.post("/api/show", json={"model": name})).json()
    assert show["capabilities"] == ["completion", "vision"]
    message = {"role": "user", "content": "what is this?", "images": [PNG]}
    reply = await client.post("/api/chat", json={"model": name, "messages": [message], "stream": False})
    assert reply.status == 200, await reply.text()
    (child,) = launcher.launched
    assert child.spec.model == repo and child.server is not None
    (sent,) = child.server.last("/v1/chat/completions")["messages"]
    assert sent["content"] == [{"type": "text", "text": "what is this?"},
                               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]  # fmt: skip


async def test_a_text_only_catalog_model_refuses_images_as_ollama_does(start: Start, launcher: FakeLauncher) -> None:
    cache_snapshot("google/gemma-3-1b-it")  # the 1B Gemma 3 is text-only
    client = await start(catalog=[])
    show = await (await client.post("/api/show", json={"model": "gemma3:1b"})).json()
    assert show["capabilities"] == ["completion"]
    message = {"role": "user", "content": "what is this?", "images": [PNG]}
    reply = await client.post("/api/chat", json={"model": "gemma3:1b", "messages": [message], "stream": False})
    assert (reply.status, await reply.json()) == (400, {"error": "registry.ollama.ai/library/gemma3:1b does not support vision"})
    assert launcher.launched == []
