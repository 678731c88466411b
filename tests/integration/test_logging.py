"""One canonical structured log line per request, whatever happened to it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, MutableMapping
from typing import Any

import aiohttp
import orjson
import pytest
import structlog
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from tests.fakes.vllm import FakeVLLM

USER = [{"role": "user", "content": "hi there"}]  # 2 words + 3 = 5 prompt tokens in the fake


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as entries:
        yield entries


def request_lines(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if e.get("event") == "request"]


def one_line(entries: list[dict[str, Any]]) -> dict[str, Any]:
    lines = request_lines(entries)
    assert len(lines) == 1, lines
    line = lines[0]
    assert line["log_level"] == "info"
    assert isinstance(line["total_ms"], float) and line["total_ms"] >= 0
    return line


async def send(client: TestClient, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, bytes]:
    data = None if body is None else orjson.dumps(body)
    async with client.request(method, path, data=data, **kw) as r:
        return r.status, await r.read()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/api/chat", {"model": "tiny", "messages": USER}, id="chat-stream"),
        pytest.param("/api/chat", {"model": "Tiny", "messages": USER, "stream": False}, id="chat"),
        pytest.param("/api/generate", {"model": "tiny:latest", "prompt": "hi there"}, id="generate-stream"),
        pytest.param("/api/generate", {"model": "tiny", "prompt": "hi there", "raw": True, "stream": False}, id="raw"),
    ],
)
async def test_generation_logs_model_backend_timing_and_tokens(
    client: TestClient, logs: list[dict[str, Any]], path: str, body: dict[str, Any]
) -> None:
    status, _ = await send(client, "POST", path, body)
    assert status == 200
    line = one_line(logs)
    assert line["method"] == "POST"
    assert line["path"] == path
    assert line["model"] == body["model"]
    assert line["backend"] == "fake"
    assert line["status"] == 200
    assert isinstance(line["ttft_ms"], float) and 0 <= line["ttft_ms"] <= line["total_ms"]
    assert line["prompt_tokens"] == 5
    assert line["completion_tokens"] == 4
    assert "error" not in line
    assert isinstance(line["request_id"], str) and line["request_id"]


async def test_fields_vllm_is_not_sent_are_named_on_the_one_line(client: TestClient, logs: list[dict[str, Any]]) -> None:
    body = {"model": "tiny", "messages": USER, "options": {"num_ctx": 4096, "temperature": 0.5}}
    status, _ = await send(client, "POST", "/api/chat", body)
    assert status == 200
    assert one_line(logs)["dropped"] == ["num_ctx"]


async def test_request_id_header_is_used(client: TestClient, logs: list[dict[str, Any]]) -> None:
    status, _ = await send(client, "POST", "/api/chat", {"model": "tiny", "messages": USER}, headers={"X-Request-Id": "abc123"})
    assert status == 200
    assert one_line(logs)["request_id"] == "abc123"


async def test_openai_passthrough_is_logged(client: TestClient, logs: list[dict[str, Any]]) -> None:
    body = {"model": "tiny", "messages": USER, "stream": True}
    status, _ = await send(client, "POST", "/v1/chat/completions", body)
    assert status == 200
    line = one_line(logs)
    assert (line["method"], line["path"], line["model"], line["backend"], line["status"]) == (
        "POST", "/v1/chat/completions", "tiny", "fake", 200)  # fmt: skip
    assert line["ttft_ms"] <= line["total_ms"]


async def test_embed_logs_prompt_tokens(client: TestClient, logs: list[dict[str, Any]]) -> None:
    status, _ = await send(client, "POST", "/api/embed", {"model": "minilm", "input": ["a b", "c"]})
    assert status == 200
    line = one_line(logs)
    assert (line["path"], line["model"], line["backend"], line["status"]) == ("/api/embed", "minilm", "fake", 200)
    assert line["prompt_tokens"] == (2 + 2) + (1 + 2)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("GET", "/api/tags", 200, id="tags"),
        pytest.param("HEAD", "/", 200, id="head-root"),
        pytest.param("GET", "/nope", 404, id="unknown-path"),
        pytest.param("GET", "/api/chat", 405, id="wrong-method"),
    ],
)
async def test_every_request_gets_one_line(
    client: TestClient, logs: list[dict[str, Any]], method: str, path: str, status: int
) -> None:
    got, _ = await send(client, method, path)
    assert got == status
    line = one_line(logs)
    assert (line["method"], line["path"], line["status"]) == (method, path, status)


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        pytest.param({"model": "nope", "messages": USER}, 404, "model 'nope' not found", id="unknown-model"),
        pytest.param({"model": "tiny", "messages": "x"}, 400, None, id="bad-request"),
    ],
)
async def test_rejected_requests_log_status_and_error(
    client: TestClient, logs: list[dict[str, Any]], body: dict[str, Any], status: int, error: str | None
) -> None:
    got, raw = await send(client, "POST", "/api/chat", body)
    assert got == status
    line = one_line(logs)
    assert line["status"] == status
    assert line["error"] == orjson.loads(raw)["error"]
    if error:
        assert line["error"] == error


async def test_backend_error_is_logged_with_backend(client: TestClient, fake: FakeVLLM, logs: list[dict[str, Any]]) -> None:
    fake.fail_next = (500, "EngineCore encountered an issue.")
    got, _ = await send(client, "POST", "/api/chat", {"model": "tiny", "messages": USER})
    assert got == 500
    line = one_line(logs)
    assert (line["status"], line["model"], line["backend"]) == (500, "tiny", "fake")
    assert "EngineCore encountered an issue." in line["error"]


async def test_midstream_error_is_logged(client: TestClient, fake: FakeVLLM, logs: list[dict[str, Any]]) -> None:
    # The client sees status 200 and a final {"error"} line: the log line is the only
    # place an operator learns that this request failed.
    fake.midstream_error = "an error was encountered while running the model"
    got, raw = await send(client, "POST", "/api/chat", {"model": "tiny", "messages": USER})
    assert got == 200
    assert orjson.loads(raw.splitlines()[-1]) == {"error": "an error was encountered while running the model"}
    line = one_line(logs)
    assert line["status"] == 200
    assert line["error"] == "an error was encountered while running the model"
    assert "ttft_ms" in line


async def test_client_hang_up_is_logged_as_499(base_url: str, fake: FakeVLLM, logs: list[dict[str, Any]]) -> None:
    fake.stall = True
    session = aiohttp.ClientSession()
    call = asyncio.ensure_future(session.post(base_url + "/api/chat", json={"model": "tiny", "messages": USER}))
    async with asyncio.timeout(2):
        await fake.stall_started.wait()
    call.cancel()
    await session.close()
    deadline = time.monotonic() + 1
    while not request_lines(logs) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    line = one_line(logs)
    assert (line["status"], line["model"], line["backend"]) == (499, "tiny", "fake")


async def test_concurrent_requests_get_their_own_lines(client: TestClient, fake: FakeVLLM, logs: list[dict[str, Any]]) -> None:
    fake.token_delay = 0.02
    bodies = [{"model": name, "messages": USER} for name in ("tiny", "TINY", "tiny:latest", "library/tiny")]
    results = await asyncio.gather(*(send(client, "POST", "/api/chat", b, headers={"X-Request-Id": f"r{i}"})
                                     for i, b in enumerate(bodies)))  # fmt: skip
    assert [s for s, _ in results] == [200] * 4
    lines = request_lines(logs)
    assert len(lines) == 4
    by_id = {line["request_id"]: line for line in lines}
    assert {i: by_id[f"r{i}"]["model"] for i in range(4)} == {i: b["model"] for i, b in enumerate(bodies)}
    assert all(line["completion_tokens"] == 4 for line in lines)


async def test_hang_up_while_tokens_flow_is_499_without_a_traceback(
    base_url: str, fake: FakeVLLM, logs: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    fake.reply.tokens = ["tok "] * 20000  # burst: the proxy is mid-write when the client leaves
    async with aiohttp.ClientSession() as session:
        response = await session.post(base_url + "/api/chat", json={"model": "tiny", "messages": USER})
        await response.content.readline()
        response.close()  # hang up mid-stream, while the proxy is writing
    deadline = time.monotonic() + 2
    while (not request_lines(logs) or fake.active) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert one_line(logs)["status"] == 499
    assert fake.active == 0  # nothing left open upstream
    assert not [r for r in caplog.records if r.levelname == "ERROR"], [r.getMessage() for r in caplog.records]
