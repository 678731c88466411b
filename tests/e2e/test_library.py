"""A library name on a real vLLM-CPU: ``ollama pull`` through the proxy downloads the tiny
model from a stand-in Hugging Face Hub (tests/fakes/hub.py on a thread of this process,
``HF_ENDPOINT`` pointed at it) into an empty cache, then ``ollama list`` shows it and a
chat starts vLLM on those cached weights (offline) and answers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import ollama
import pytest
import yaml

from tests.e2e.conftest import REPO, free_port
from tests.e2e.test_managed import START_TIMEOUT_S, vllm_servers
from tests.fakes.hub import FakeHub

REPO_ID = "test-org/tiny-chat"
NAME = "tiny-lib:latest"


@pytest.fixture(scope="module")
def hub(vllm_cpu: ModuleType) -> Iterator[FakeHub]:
    model_dir = Path(vllm_cpu.ensure_tiny_model())
    files = {
        str(p.relative_to(model_dir)): p.read_bytes() for p in model_dir.rglob("*") if p.is_file() and not p.name.startswith(".")
    }
    server = FakeHub({REPO_ID: files})
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="fake hub", daemon=True)
    thread.start()
    assert ready.wait(30)
    yield server
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)
    loop.close()


@pytest.fixture(scope="module")
def proxy(vllm_cpu: ModuleType, hub: FakeHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("library")
    common = [a for a in vllm_cpu.COMMON_ARGS if a not in ("--host", "127.0.0.1")]
    entry = {"name": NAME, "repo": REPO_ID, "args": ["--max-model-len", str(vllm_cpu.MAX_MODEL_LEN), *common]}
    (tmp / "config.yaml").write_text(yaml.safe_dump({"vllm_python": str(vllm_cpu.venv_python()), "catalog": [entry]}))
    port = free_port()
    env = {**os.environ, **vllm_cpu.SERVER_ENV, "OLLAMA_HOST": "", "HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp / "hf")}
    env.pop("HF_HUB_OFFLINE")  # the proxy pulls from the stand-in hub; its vLLM children run offline
    cmd = [sys.executable, "-m", "proxy", "serve", "--config", str(tmp / "config.yaml"), "--listen", f"127.0.0.1:{port}",
           "--workers", "1"]  # fmt: skip
    with (tmp / "proxy.log").open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/version", timeout=5):
                    pass
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, (tmp / "proxy.log").read_text()
                time.sleep(0.2)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        for pid in vllm_servers(NAME):
            os.kill(pid, signal.SIGKILL)


def test_pull_then_chat_a_library_name(proxy: str, hub: FakeHub) -> None:
    with ollama.Client(host=proxy, timeout=START_TIMEOUT_S) as client:
        _pull_then_chat(client)


def _pull_then_chat(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError, match="try pulling it first"):
        client.chat(NAME, messages=[{"role": "user", "content": "hi"}])
    progress = list(client.pull(NAME, stream=True))
    assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
    assert any(p.digest and p.completed == p.total and p.total for p in progress)
    assert [m.model for m in client.list().models] == [NAME]
    reply = client.chat(NAME, messages=[{"role": "user", "content": "hi"}], options={"num_predict": 8})
    assert reply.done and reply.message.role == "assistant" and reply.eval_count
    assert [m.model for m in client.ps().models] == [NAME]
