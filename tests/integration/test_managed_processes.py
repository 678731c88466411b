"""Managed models as real child processes through the CLI: the subprocess launcher runs
the fake vLLM program (tests/fakes/vllm_server.py) in place of vLLM, so one start per
model across workers, and no child left behind, are checked on real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.integration.helpers import REPO, free_port, wait_until_up
from tests.procs import launched

pytest.importorskip("proxy.managed.launcher", reason="the subprocess launcher (proxy/managed/launcher.py) is not here yet")


def fake_children(marker: str) -> list[int]:
    """Live processes started with ``marker`` on their command line (not the launcher's shim)."""
    return launched(lambda argv: marker.encode() in argv)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
async def test_one_child_per_model_across_workers_and_none_left_behind(tmp_path: Path, workers: int, how: str) -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    command = [sys.executable, "-m", "tests.fakes.vllm_server", "--marker", marker]
    config = {"models": [{"name": "tiny", "launch": {"model": "fake/tiny", "command": command,
                                                     "env": {"PYTHONPATH": str(REPO)}}}]}  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    cmd = [sys.executable, "-m", "proxy", "serve", "--config", str(tmp_path / "c.yaml"), "--listen", f"127.0.0.1:{port}",
           "--workers", str(workers)]  # fmt: skip
    log = (tmp_path / "proxy.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "OLLAMA_HOST": ""}, start_new_session=True)  # fmt: skip
    try:
        await wait_until_up(f"http://127.0.0.1:{port}/api/tags", proc)
        assert fake_children(marker) == []  # nothing starts until asked
        chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": False}
        async with aiohttp.ClientSession() as session:
            replies = await asyncio.gather(*(session.post(f"http://127.0.0.1:{port}/api/chat", json=chat) for _ in range(6)))
            assert [r.status for r in replies] == [200] * 6
            async with session.get(f"http://127.0.0.1:{port}/api/ps") as ps:
                assert [m["name"] for m in (await ps.json())["models"]] == ["tiny:latest"]
        assert len(fake_children(marker)) == 1, (tmp_path / "proxy.log").read_text()
        proc.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGKILL)
        proc.wait(30)
        for _ in range(150):  # the children get SIGTERM, then SIGKILL after the grace period
            if not fake_children(marker):
                break
            await asyncio.sleep(0.1)
        assert fake_children(marker) == [], (tmp_path / "proxy.log").read_text()
    finally:
        log.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in fake_children(marker):
            os.kill(pid, signal.SIGKILL)


async def test_a_child_that_exits_at_start_answers_with_its_log(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "tests.fakes.vllm_server", "--fail"]
    config = {"models": [{"name": "broken", "launch": {"model": "fake/broken", "command": command,
                                                       "env": {"PYTHONPATH": str(REPO)}}}]}  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    cmd = [sys.executable, "-m", "proxy", "serve", "--config", str(tmp_path / "c.yaml"), "--listen", f"127.0.0.1:{port}",
           "--workers", "1"]  # fmt: skip
    with (tmp_path / "proxy.log").open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OLLAMA_HOST": ""})
        try:
            await wait_until_up(f"http://127.0.0.1:{port}/api/tags", proc)
            async with (
                aiohttp.ClientSession() as session,
                session.post(f"http://127.0.0.1:{port}/api/generate", json={"model": "broken"}) as reply,
            ):
                assert reply.status == 500
                error = (await reply.json())["error"]
            assert "vLLM could not start model 'broken:latest'" in error and "CUDA out of memory" in error
        finally:
            proc.terminate()
            proc.wait(30)
