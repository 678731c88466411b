"""Fair turns and priorities on managed models, over real sockets: the limit is the batch
the proxy starts vLLM with (``--max-num-seqs`` in ``launch.args``), else what a dev-mode
vLLM's /server_info says, else the documented default; ``--scheduling-policy priority``
in ``launch.args`` makes the proxy send the keys' priorities."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from proxy.app import create_app
from proxy.config import from_mapping
from proxy.state import ADMISSION
from tests.fakes.launcher import FakeChild, FakeLauncher
from tests.integration.helpers import until

CHAT = {"model": "turns:1b", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("args", "env", "dev_mode_seqs", "running"),
    [
        pytest.param("--max-num-seqs 2", {}, 0, 2, id="max-num-seqs"),
        pytest.param("--max_num_seqs=1 --data-parallel-size 2", {}, 0, 2, id="per-rank-times-data-parallel"),
        pytest.param("", {"VLLM_SERVER_DEV_MODE": "1"}, 2, 2, id="dev-mode-server-info"),
        pytest.param("--max-num-seqs 1", {"VLLM_SERVER_DEV_MODE": "1"}, 2, 1, id="the-args-win-over-server-info"),
        pytest.param("", {}, 0, 3, id="neither: the documented 256"),
    ],
)
async def test_a_managed_models_fair_turn_limit_is_its_vllms_batch(
    aiohttp_server: Any, args: str, env: dict[str, str], dev_mode_seqs: int, running: int
) -> None:
    launcher = FakeLauncher(serve=True)

    def prepare(child: FakeChild) -> None:
        assert child.server is not None
        child.server.stall = True
        child.server.dev_mode, child.server.max_num_seqs = bool(dev_mode_seqs), dev_mode_seqs

    launcher.on_launch = prepare
    models = [{"name": "turns:1b", "launch": {"model": "org/turns", "args": args, "env": env}}]
    app = create_app(from_mapping({"models": models}, "test"), launcher)
    base = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(session.post(f"{base}/api/chat", json=CHAT)) for _ in range(3)]
        try:
            await until(lambda: sum(_turns(app)) == 3, "every request to take or wait for a turn")
            await asyncio.sleep(0.05)  # a request over the limit would have been let through by now
            assert _turns(app) == (running, 3 - running)
        finally:
            for task in tasks:
                task.cancel()


def _turns(app: Any) -> tuple[int, int]:
    turns = app[ADMISSION].snapshot().get("turns:1b")
    return (turns.in_flight, turns.queued) if turns is not None else (0, 0)


@pytest.mark.parametrize(
    ("args", "sent"),
    [
        pytest.param("--scheduling-policy priority", 3, id="priority-policy: the key's priority"),
        pytest.param("--scheduling-policy=priority", 3, id="priority-policy-with-equals"),
        pytest.param("--max-num-seqs 8", None, id="fcfs: none"),
    ],
)
async def test_a_managed_model_started_with_priority_scheduling_gets_the_keys_priority(
    aiohttp_server: Any, args: str, sent: int | None
) -> None:
    launcher = FakeLauncher(serve=True)
    models = [{"name": "turns:1b", "launch": {"model": "org/turns", "args": args}}]
    keys = [{"name": "batch", "key": "batch-key-123456", "priority": 3}]
    app = create_app(from_mapping({"models": models, "api_keys": keys}, "test"), launcher)
    base = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    headers = {"Authorization": "Bearer batch-key-123456"}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.post(f"{base}/api/chat", json={**CHAT, "stream": False}) as reply,
    ):
        assert reply.status == 200
    [child] = launcher.launched
    assert child.server is not None
    [body] = [b for path, b in child.server.requests if path == "/v1/chat/completions"]
    assert body.get("priority") == sent
