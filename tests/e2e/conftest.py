"""Session fixtures for the end-to-end tier: two real vLLM-CPU servers and the proxy.

Started once per session, one after the other (2 cores: they contend), each on a free
port: the chat server (tiny random Llama, served as ``tiny``, tool parser on), then the
embedding server (MiniLM, served as ``minilm``), then the proxy itself as a subprocess
through its public CLI. Everything is stopped by PID at the end, also when start-up
fails half-way.

The whole tier is skipped (loudly, with the reason) when ``PROXY_E2E_SKIP`` is set (CI
sets it when the vLLM install failed) or when the vLLM venv is missing.

Other engineers use vLLM on this machine too: run the tier under
``flock /tmp/vllm.lock .venv/bin/python -m pytest tests/e2e``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
VLLM_CPU_PATH = REPO / "scripts" / "vllm_cpu.py"
SERVER_READY_TIMEOUT_S = 240.0  # per vLLM server; each takes ~15-25 s here
PROXY_READY_TIMEOUT_S = 60.0  # the proxy probes each model's capabilities before it serves

TIMINGS: dict[str, float] = {}  # shown in the terminal summary


def load_vllm_cpu() -> ModuleType:
    """scripts/vllm_cpu.py is not a package: import it from its path."""
    spec = importlib.util.spec_from_file_location("vllm_cpu", VLLM_CPU_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    chat_url: str  # the vLLM chat server (model `tiny`), no trailing slash
    embed_url: str  # the vLLM embedding server (model `minilm`)
    proxy_url: str  # the proxy (Ollama API)
    logs: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def _get_json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return b"\n".join(path.read_bytes().splitlines()[-lines:]).decode("utf-8", "replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"


def _wait_for_proxy(url: str, proc: subprocess.Popen[bytes], log: Path, expected: set[str]) -> float:
    """Poll the proxy's /api/tags until it lists every expected model."""
    t0 = time.monotonic()
    seen: set[str] = set()
    while True:
        rc = proc.poll()
        if rc is not None:
            pytest.fail(f"the proxy exited with code {rc} before it was ready; log tail:\n{_log_tail(log)}")
        try:
            seen = {m["name"] for m in _get_json(f"{url}/api/tags", timeout=5)["models"]}
            if expected <= seen:
                return time.monotonic() - t0
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError, KeyError):
            pass
        if time.monotonic() - t0 > PROXY_READY_TIMEOUT_S:
            pytest.fail(
                f"the proxy did not list {sorted(expected)} within {PROXY_READY_TIMEOUT_S:.0f} s "
                f"(last /api/tags: {sorted(seen)}); log tail:\n{_log_tail(log)}"
            )
        time.sleep(0.2)


def _stop_proxy(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def vllm_cpu() -> ModuleType:
    reason = os.environ.get("PROXY_E2E_SKIP")
    if reason:
        pytest.skip(f"end-to-end tier skipped: {reason}")
    module = load_vllm_cpu()
    if not (module.VENV / "bin" / "python").exists():
        pytest.skip("vLLM is not installed: run scripts/install-vllm.sh")
    return module


@pytest.fixture(scope="session")
def stack(vllm_cpu: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logdir = tmp_path_factory.mktemp("e2e-logs")
    logs = {"chat": logdir / "vllm-chat.log", "embed": logdir / "vllm-embed.log", "proxy": logdir / "proxy.log"}
    timings: dict[str, float] = {}
    servers: list[subprocess.Popen[bytes]] = []  # vLLM servers, stopped with vllm_cpu.stop
    proxy: subprocess.Popen[bytes] | None = None
    t_setup = time.monotonic()
    try:
        t0 = time.monotonic()
        model_dir = vllm_cpu.ensure_tiny_model()
        timings["tiny model build"] = time.monotonic() - t0

        chat_port = free_port()
        chat_url = f"http://127.0.0.1:{chat_port}"
        servers.append(vllm_cpu.start_chat(model_dir, chat_port, logs["chat"]))
        try:
            timings["vLLM chat start"] = vllm_cpu.wait_ready(chat_url, servers[-1], SERVER_READY_TIMEOUT_S, logs["chat"])
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"vLLM chat server did not become ready: {exc}")

        embed_port = free_port()
        embed_url = f"http://127.0.0.1:{embed_port}"
        t0 = time.monotonic()
        servers.append(vllm_cpu.start_embed(embed_port, logs["embed"]))
        try:
            vllm_cpu.wait_ready(embed_url, servers[-1], SERVER_READY_TIMEOUT_S, logs["embed"])
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"vLLM embedding server did not become ready: {exc}")
        timings["vLLM embed start"] = time.monotonic() - t0  # includes locating the model

        proxy_port = free_port()
        proxy_url = f"http://127.0.0.1:{proxy_port}"
        env = {k: v for k, v in os.environ.items() if k != "OLLAMA_HOST"}
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [sys.executable, "-m", "proxy", "serve", "--backend", chat_url, "--backend", embed_url,
               "--listen", f"127.0.0.1:{proxy_port}", "--workers", "1"]  # fmt: skip
        with open(logs["proxy"], "ab") as out:
            proxy = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        timings["proxy start"] = _wait_for_proxy(proxy_url, proxy, logs["proxy"], {"tiny:latest", "minilm:latest"})
        timings["setup total"] = time.monotonic() - t_setup
        TIMINGS.update(timings)
        yield Stack(chat_url, embed_url, proxy_url, logs, timings)
    finally:
        t0 = time.monotonic()
        errors = []
        if proxy is not None:
            try:
                _stop_proxy(proxy)
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest
                errors.append(f"proxy: {exc!r}")
        for server in reversed(servers):
            try:
                vllm_cpu.stop(server)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"vLLM pid {server.pid}: {exc!r}")
        TIMINGS["teardown"] = time.monotonic() - t0
        if errors:
            raise RuntimeError("could not stop every e2e process: " + "; ".join(errors))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS:
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in TIMINGS.items())
        terminalreporter.write_line(f"e2e timings: {parts}")
