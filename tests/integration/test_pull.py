"""``/api/pull`` and ``/api/delete`` of library models against a stand-in Hugging Face Hub
(tests/fakes/hub.py, ``HF_ENDPOINT`` pointed at it, an empty cache per test): the
official ``ollama`` client sees Ollama's progress and success, the files land in the
Hugging Face cache, and the model is then listed and served."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import orjson
import pytest
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from proxy.app import create_app
from proxy.config import from_mapping
from tests.fakes.hub import COMMIT, FakeHub, tiny_repo
from tests.fakes.launcher import FakeLauncher

QWEN = "Qwen/Qwen2.5-0.5B-Instruct"
LLAMA = "meta-llama/Llama-3.2-1B-Instruct"  # gated on the stand-in hub, as on the real one
Start = Callable[..., Awaitable[str]]


@pytest.fixture
async def hub(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeHub]:
    server = FakeHub({QWEN: tiny_repo(), LLAMA: tiny_repo()}, gated={LLAMA})
    await server.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    yield server
    await server.stop()


@pytest.fixture
def launcher() -> FakeLauncher:
    return FakeLauncher(serve=True)


@pytest.fixture
def start(aiohttp_server: Any, launcher: FakeLauncher, hub: FakeHub) -> Start:
    async def make(**data: Any) -> str:
        data.setdefault("catalog", [])
        server: TestServer = await aiohttp_server(create_app(from_mapping(data, "test"), launcher))
        return str(server.make_url("")).rstrip("/")

    return make


def snapshot(repo: str) -> Path:
    return Path(os.environ["HF_HUB_CACHE"]) / f"models--{repo.replace('/', '--')}" / "snapshots" / COMMIT


async def post(url: str, body: dict[str, Any], method: str = "POST") -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as s, s.request(method, url, data=orjson.dumps(body)) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.read()


def lines(raw: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in raw.splitlines()]


async def test_the_ollama_client_pulls_with_progress_then_the_model_is_served(start: Start, launcher: FakeLauncher) -> None:
    base = await start()
    async with ollama.AsyncClient(host=base) as client:
        assert [m.model for m in (await client.list()).models] == []
        progress = [p async for p in await client.pull("qwen2.5:0.5b", stream=True)]
        assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
        assert [p.status for p in progress[-4:]] == [
            "verifying sha256 digest",
            "writing manifest",
            "removing unused layers",
            "success",
        ]
        layers: dict[str, list[ollama.ProgressResponse]] = {}
        for p in progress:
            if p.digest:
                layers.setdefault(p.digest, []).append(p)
        assert len(layers) == 4  # config, weights, two tokenizer files; not the .bin nor original/
        for digest, updates in layers.items():
            assert updates[0].status == f"pulling {digest[7:19]}" and digest.startswith("sha256:") and len(digest) == 71
            assert updates[0].completed == 0 and updates[-1].completed == updates[-1].total
        weights = [u for u in layers.values() if u[0].total == len(tiny_repo()["model.safetensors"])]
        assert len(weights) == 1
        assert sorted(f.name for f in snapshot(QWEN).iterdir()) == [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ]
        assert (snapshot(QWEN) / "model.safetensors").read_bytes() == tiny_repo()["model.safetensors"]
        refs = snapshot(QWEN).parents[1] / "refs" / "main"
        assert refs.read_text() == COMMIT  # vLLM (offline) finds `main` in the cache
        assert [m.model for m in (await client.list()).models] == ["qwen2.5:0.5b"]
        reply = await client.chat("qwen2.5:0.5b", messages=[{"role": "user", "content": "hi"}])
        assert reply.message.content == "Hello, world!"
    assert [c.spec.model for c in launcher.launched] == [QWEN]


async def test_stream_false_answers_only_success_and_insecure_is_accepted(start: Start) -> None:
    base = await start()
    status, ctype, raw = await post(f"{base}/api/pull", {"name": "qwen2.5:0.5b", "stream": False, "insecure": True})
    assert (status, ctype, orjson.loads(raw)) == (200, "application/json; charset=utf-8", {"status": "success"})
    assert (snapshot(QWEN) / "model.safetensors").exists()


async def test_an_unknown_name_is_ollamas_pull_error(start: Start) -> None:
    base = await start()
    with capture_logs() as entries:
        status, _, raw = await post(f"{base}/api/pull", {"model": "no-such-model:7b"})
    assert status == 200 and lines(raw) == [{"status": "pulling manifest"}, {"error": "pull model manifest: file does not exist"}]
    logged = [e for e in entries if e["event"] == "request"]
    assert [e.get("error") for e in logged] == ["pull model manifest: file does not exist"]  # the log line says it failed
    status, _, raw = await post(f"{base}/api/pull", {"model": "no-such-model:7b", "stream": False})
    assert (status, orjson.loads(raw)) == (500, {"error": "pull model manifest: file does not exist"})
    status, _, raw = await post(f"{base}/api/pull", {"model": "bad name!"})
    assert (status, orjson.loads(raw)) == (400, {"error": "invalid model name"})
    async with ollama.AsyncClient(host=base) as client:
        with pytest.raises(ollama.ResponseError, match="file does not exist"):
            [p async for p in await client.pull("no-such-model:7b", stream=True)]


async def test_a_gated_repository_needs_hf_token(start: Start, hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    base = await start()
    status, _, raw = await post(f"{base}/api/pull", {"model": "llama3.2:1b"})
    assert status == 200 and lines(raw)[0] == {"status": "pulling manifest"}
    error = lines(raw)[-1]["error"]
    assert f"{LLAMA} is gated on Hugging Face" in error and "HF_TOKEN" in error and f"https://huggingface.co/{LLAMA}" in error
    status, _, raw = await post(f"{base}/api/pull", {"model": "llama3.2:1b", "stream": False})
    assert status == 500 and "HF_TOKEN" in orjson.loads(raw)["error"]
    monkeypatch.setenv("HF_TOKEN", hub.token)
    status, _, raw = await post(f"{base}/api/pull", {"model": "llama3.2:1b"})
    assert lines(raw)[-1] == {"status": "success"}
    assert hub.token not in raw.decode()


async def test_a_repository_missing_on_the_hub_says_so(start: Start) -> None:
    base = await start(catalog=[{"name": "mine:1b", "repo": "someone/missing"}])
    status, _, raw = await post(f"{base}/api/pull", {"model": "mine:1b"})
    assert status == 200 and "Hugging Face has no repository someone/missing" in lines(raw)[-1]["error"]


async def test_a_client_hang_up_stops_the_download(start: Start, hub: FakeHub) -> None:
    hub.chunk_delay = 0.005  # 40 KiB of weights take 0.2 s
    base = await start()
    async with aiohttp.ClientSession() as s, s.post(f"{base}/api/pull", json={"model": "qwen2.5:0.5b"}) as r:
        async for line in r.content:
            if orjson.loads(line).get("total") == len(tiny_repo()["model.safetensors"]):
                break  # the weights started: hang up
    for thread in [t for t in threading.enumerate() if t.name == f"pull {QWEN}"]:
        await asyncio.to_thread(thread.join, 10)  # the hub and the proxy run on this loop: do not block it
    assert not any("tokenizer" in r for r in hub.requests if r.startswith("GET")), hub.requests
    assert not (snapshot(QWEN) / "tokenizer.json").exists()


async def test_delete_removes_the_weights_only_when_allowed(start: Start) -> None:
    keep = await start()
    assert lines((await post(f"{keep}/api/pull", {"model": "qwen2.5:0.5b"}))[2])[-1] == {"status": "success"}
    status, _, raw = await post(f"{keep}/api/delete", {"model": "qwen2.5:0.5b"}, "DELETE")
    assert status == 501 and "delete_weights: true" in orjson.loads(raw)["error"]
    assert snapshot(QWEN).exists()
    remove = await start(delete_weights=True)
    status, _, raw = await post(f"{remove}/api/delete", {"name": "qwen2.5:0.5b"}, "DELETE")
    assert (status, raw) == (200, b"")
    assert not snapshot(QWEN).exists()
    status, _, raw = await post(f"{remove}/api/delete", {"model": "qwen2.5:0.5b"}, "DELETE")
    assert (status, orjson.loads(raw)) == (404, {"error": "model 'qwen2.5:0.5b' not found"})
