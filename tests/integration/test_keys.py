"""API keys over real sockets: with ``api_keys`` configured every route but ``GET``/``HEAD /``
and CORS preflights needs ``Authorization: Bearer <key>``; a missing or wrong key gets 401
JSON and never reaches vLLM, and no key ever shows in a log line."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import pytest
import structlog
import yaml
from structlog.testing import capture_logs

from proxy.config import from_mapping
from tests.fakes.vllm import FakeVLLM
from tests.integration.helpers import free_port, serve, stop, wait_until_up

ALICE = "alice-key-0123456789"
BOB = "bob-key-9876543210"  # configured by its digest only
CAROL = "carol-key-from-the-file"
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": False}
Start = Callable[..., Awaitable[str]]


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as entries:
        yield entries


@pytest.fixture
async def url(start_proxy: Start, fake: FakeVLLM, tmp_path: Path) -> str:
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(f"- name: carol\n  key: {CAROL}\n")
    return await start_proxy(
        backends=[{"url": fake.url, "name": "fake"}],
        api_keys=[{"name": "alice", "key": ALICE}, {"name": "bob", "key_sha256": hashlib.sha256(BOB.encode()).hexdigest()}],
        api_keys_file=str(keys_file),
    )


async def call(url: str, method: str, path: str, headers: dict[str, str] | None = None, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.request(method, url + path, headers=headers, json=body) as reply:
        data = await reply.json() if reply.content_type == "application/json" else await reply.text()
        return reply.status, data


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param(None, 401, id="no key"),
        pytest.param(bearer("not-a-key-at-all"), 401, id="wrong key"),
        pytest.param(bearer(ALICE[:-1]), 401, id="a prefix of a key"),
        pytest.param(bearer(""), 401, id="empty bearer (VS Code Copilot)"),
        pytest.param({"Authorization": ALICE}, 401, id="key without the Bearer scheme"),
        pytest.param({"X-Api-Key": ALICE}, 401, id="X-Api-Key is not read"),
        pytest.param(bearer(ALICE), 200, id="right key"),
        pytest.param({"Authorization": f"bearer {ALICE}"}, 200, id="scheme in any case"),
        pytest.param(bearer(BOB), 200, id="key_sha256 entry"),
        pytest.param(bearer(CAROL), 200, id="api_keys_file entry"),
    ],
)
async def test_chat_needs_a_configured_key(url: str, fake: FakeVLLM, headers: dict[str, str] | None, status: int) -> None:
    sent = len(fake.requests)
    code, body = await call(url, "POST", "/api/chat", headers, CHAT)
    assert code == status, body
    if status == 401:
        assert body == {"error": "unauthorized: this server needs an API key, sent as 'Authorization: Bearer <key>'"}
        assert len(fake.requests) == sent  # never reached vLLM
    else:
        assert body["message"]["role"] == "assistant" and len(fake.requests) == sent + 1


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("GET", "/", 200, id="GET / (liveness) open"),
        pytest.param("HEAD", "/", 200, id="HEAD / (ollama CLI heartbeat) open"),
        pytest.param("GET", "/api/version", 401, id="version closed"),
        pytest.param("GET", "/api/tags", 401, id="tags closed"),
        pytest.param("GET", "/api/ps", 401, id="ps closed"),
        pytest.param("GET", "/v1/models", 401, id="OpenAI models closed"),
        pytest.param("GET", "/no/such/route", 401, id="unknown routes closed too"),
    ],
)
async def test_only_the_root_is_open(url: str, method: str, path: str, status: int) -> None:
    code, _ = await call(url, method, path)
    assert code == status


async def test_a_cors_preflight_needs_no_key(url: str) -> None:
    headers = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization"}  # fmt: skip
    async with aiohttp.ClientSession() as session, session.options(url + "/api/chat", headers=headers) as reply:
        assert reply.status == 204
        assert "Authorization" in reply.headers["Access-Control-Allow-Headers"]
    # the request that follows it does need the key, and its 401 still carries CORS headers
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/api/chat", json=CHAT, headers={"Origin": "http://localhost:3000"}) as r,
    ):
        assert r.status == 401 and r.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"


async def test_401_says_bearer_and_openai_routes_get_openai_errors(url: str) -> None:
    async with aiohttp.ClientSession() as session, session.post(url + "/v1/chat/completions", json=CHAT) as reply:
        assert reply.status == 401
        assert reply.headers["WWW-Authenticate"] == 'Bearer realm="ollama-vllm-proxy"'
        body = await reply.json()
    assert body["error"]["type"] == "authentication_error" and body["error"]["code"] == 401
    assert body["error"]["message"].startswith("unauthorized")


async def test_official_ollama_client_with_a_key(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with ollama.AsyncClient(host=url, headers=bearer(ALICE)) as client:
        reply = await client.chat(model="tiny", messages=[{"role": "user", "content": "hi"}])
        assert reply.message.content
        assert [m.model for m in (await client.list()).models]
    monkeypatch.setenv("OLLAMA_API_KEY", BOB)  # what ollama-python sends when no header is given
    async with ollama.AsyncClient(host=url) as client:
        assert (await client.generate(model="tiny", prompt="hi")).done
    monkeypatch.delenv("OLLAMA_API_KEY")
    async with ollama.AsyncClient(host=url) as client:
        with pytest.raises(ollama.ResponseError) as info:
            await client.chat(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 401 and "unauthorized" in info.value.error


async def test_the_log_line_names_the_key_never_shows_it(url: str, logs: list[MutableMapping[str, Any]]) -> None:
    for headers in (bearer(ALICE), bearer(BOB), bearer(CAROL), bearer("wrong-" + ALICE), None):
        await call(url, "POST", "/api/chat", headers, CHAT)
        await call(url, "POST", "/api/chat", headers, {**CHAT, "stream": True})
    lines = [e for e in logs if e.get("event") == "request"]
    assert [(e["user"], e["user_source"], e["status"]) for e in lines[::2]] == [
        ("alice", "key", 200), ("bob", "key", 200), ("carol", "key", 200),
        ("127.0.0.1", "address", 401), ("127.0.0.1", "address", 401),
    ]  # fmt: skip
    text = repr(logs)
    assert all(secret not in text for secret in (ALICE, BOB, CAROL, hashlib.sha256(BOB.encode()).hexdigest()))


def test_the_config_never_shows_a_key(tmp_path: Path) -> None:
    digest = hashlib.sha256(BOB.encode()).hexdigest()
    config = from_mapping(
        {"api_keys": [{"name": "alice", "key": ALICE}, {"name": "bob", "key_sha256": digest}], "user_jwt_secret": "jwt-secret-x"}
    )
    shown = repr(config) + str(config)
    assert "alice" in shown and "bob" in shown
    assert ALICE not in shown and digest not in shown and "jwt-secret-x" not in shown
    assert repr(config.auth.keys[0]) == "ApiKey(name='alice', weight=1.0, priority=None)"
    assert ALICE in config.secrets() and "jwt-secret-x" in config.secrets()  # the log scrubber masks them


def test_any_bearer_token_is_masked_in_log_text() -> None:
    """The second line of defence (proxy/redact.py), as the log set-up (proxy/logs.py) runs
    it on every line: a configured key, and any bearer token at all, are masked."""
    from proxy.logs import _Scrubber

    scrubber = _Scrubber(from_mapping({"api_keys": [{"name": "alice", "key": ALICE}]}).secrets())
    event = scrubber(None, "warning", {"event": "echoed", "text": f"Authorization: Bearer {BOB}; key {ALICE}"})
    assert event == {"event": "echoed", "text": "Authorization: Bearer ***; key ***"}
    assert _Scrubber(())(None, "info", {"h": [f"bearer {BOB}"]}) == {"h": ["bearer ***"]}  # with no secrets configured too


def _serve(config: dict[str, Any], tmp_path: Path, listen: str) -> subprocess.Popen[bytes]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return serve("--config", str(path), "--listen", listen, "--workers", "2")


async def test_a_real_serve_with_two_workers_checks_keys_and_never_prints_one(fake: FakeVLLM, tmp_path: Path) -> None:
    port = free_port()
    config = {"log_format": "json", "log_level": "debug", "backends": [{"url": fake.url}],
              "api_keys": [{"name": "alice", "key": ALICE}]}  # fmt: skip
    proc = _serve(config, tmp_path, f"0.0.0.0:{port}")
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_until_up(base + "/", proc)
        seen = [(await call(base, "POST", "/api/chat", headers, CHAT))[0] for headers in (bearer(ALICE), bearer(BOB), None)]
    finally:
        output = stop(proc)
    assert seen == [200, 401, 401]
    assert ALICE not in output and BOB not in output
    assert '"user":"alice"' in output.replace(" ", "") and "without api_keys" not in output


async def test_a_real_serve_open_to_the_network_warns_once(fake: FakeVLLM, tmp_path: Path) -> None:
    port = free_port()
    proc = _serve({"backends": [{"url": fake.url}]}, tmp_path, f"0.0.0.0:{port}")
    try:
        await wait_until_up(f"http://127.0.0.1:{port}/api/version", proc)
    finally:
        output = stop(proc)
    assert output.count(f"warning: listening on 0.0.0.0:{port} without api_keys") == 1, output
