"""Backend credentials never leave the proxy, and a backend that is down is reported as
down (502), never as a missing model (404, which makes clients offer to pull it)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.fakes.vllm import FakeVLLM
from tests.integration.helpers import closed_port, free_port, serve, stop, wait_until_up

PASSWORD = "pa55-w0rd-S3CRET"
API_KEY = "sk-T0KEN-never-shown"
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}


def with_userinfo(url: str, user: str = "ops") -> str:
    return url.replace("http://", f"http://{user}:{PASSWORD}@")


async def exchange(session: aiohttp.ClientSession, base: str, method: str, path: str, body: Any = None) -> tuple[int, str]:
    async with session.request(method, base + path, json=body) as response:
        return response.status, await response.text()


# (method, path, body) of every route that names a backend or may fail because of one.
PROBES = [
    ("GET", "/api/tags", None),
    ("GET", "/api/ps", None),
    ("GET", "/v1/models", None),
    ("POST", "/api/show", {"model": "tiny"}),
    ("POST", "/api/chat", {**CHAT, "stream": False}),
    ("POST", "/api/chat", CHAT),
    ("POST", "/api/generate", {"model": "tiny", "prompt": "hi", "stream": False}),
    ("POST", "/api/chat", {**CHAT, "model": "on-down"}),
    ("POST", "/api/chat", {**CHAT, "model": "on-down", "stream": False}),
    ("POST", "/api/generate", {"model": "nowhere", "prompt": "hi"}),
    ("POST", "/api/show", {"model": "nowhere"}),
    ("POST", "/api/pull", {"model": "nowhere"}),
    ("POST", "/api/embed", {"model": "nowhere", "input": "x"}),
    ("POST", "/v1/chat/completions", {**CHAT, "model": "on-down"}),
    ("GET", "/v1/models/nowhere", None),
]


async def test_no_password_or_api_key_in_any_reply_or_log_line(fake: FakeVLLM, tmp_path: Path) -> None:
    """A real `serve` process, one backend reachable (userinfo and an api_key), one down
    (userinfo): every reply and every line the process printed, start-up included."""
    down = f"http://127.0.0.1:{closed_port()}"
    config = {
        "log_format": "json",
        "log_level": "debug",
        "backends": [
            {"url": with_userinfo(fake.url), "name": "up", "api_key": API_KEY},
            {"url": with_userinfo(down, "svc")},  # default name: host:port, never the userinfo
        ],
        "models": [{"name": "on-down", "backend": with_userinfo(down, "svc"), "served": "tiny"}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    proc = serve("--config", str(path), "--listen", f"127.0.0.1:{port}", "--workers", "1")
    base = f"http://127.0.0.1:{port}"
    replies: list[tuple[str, int, str]] = []
    try:
        await wait_until_up(f"{base}/api/version", proc)
        async with aiohttp.ClientSession() as session:
            for method, route, body in PROBES:
                status, text = await exchange(session, base, method, route, body)
                replies.append((f"{method} {route} {body}", status, text))
    finally:
        output = stop(proc, timeout=30)
    for what, _, text in replies:
        assert PASSWORD not in text and API_KEY not in text, what
    assert PASSWORD not in output and API_KEY not in output
    by_probe = {what: (status, text) for what, status, text in replies}
    assert by_probe[f"POST /api/chat { ({**CHAT, 'stream': False}) }"][0] == 200  # credentials still reach the backend
    status, text = by_probe["POST /api/show {'model': 'nowhere'}"]
    assert status == 502
    assert f"svc:***@127.0.0.1:{down.rsplit(':', 1)[1]}" in text
    assert "is unreachable" in text
    assert f"127.0.0.1:{down.rsplit(':', 1)[1]}" in output  # the log names the down backend, redacted
    assert "svc:***@" in output


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param("http://u:p@h:8000", "http://u:***@h:8000", id="user and password"),
        pytest.param("http://u@h:8000", "http://u@h:8000", id="user only"),
        pytest.param("https://h:8000/base", "https://h:8000/base", id="no userinfo"),
        pytest.param("http://u:p%40ss@h", "http://u:***@h", id="percent-encoded password"),
        pytest.param("http://a:b:c@h:1", "http://a:***@h:1", id="colon in password"),
    ],
)
def test_display_url_masks_the_password(url: str, shown: str) -> None:
    from proxy.redact import display_url  # noqa: PLC0415

    assert display_url(url) == shown


StartProxy = Callable[..., Awaitable[str]]


@pytest.fixture
async def json_of(session: aiohttp.ClientSession) -> Callable[..., Awaitable[tuple[int, Any]]]:
    async def call(base: str, path: str, body: Any) -> tuple[int, Any]:
        async with session.post(base + path, json=body) as response:
            return response.status, await response.json(content_type=None)

    return call


async def test_started_with_its_backend_down_a_name_is_502_not_404(start_proxy: StartProxy, json_of: Any) -> None:
    down = f"http://127.0.0.1:{closed_port()}"
    base = await start_proxy(backends=[{"url": with_userinfo(down), "name": "gpu1"}])
    cases = {
        "chat": ("/api/chat", {**CHAT, "stream": False}),
        "chat-stream": ("/api/chat", CHAT),
        "generate": ("/api/generate", {"model": "tiny", "prompt": "hi"}),
        "show": ("/api/show", {"model": "tiny"}),
        "pull": ("/api/pull", {"model": "tiny"}),
        "embed": ("/api/embed", {"model": "tiny", "input": "x"}),
        "openai": ("/v1/chat/completions", CHAT),
    }
    for case, (path, body) in cases.items():
        status, reply = await json_of(base, path, body)
        assert status == 502, case
        text = reply["error"]["message"] if path.startswith("/v1/") else reply["error"]
        assert text.startswith(f"vLLM backend gpu1 (http://ops:***@127.0.0.1:{down.rsplit(':', 1)[1]}) is unreachable"), case
        assert PASSWORD not in text


async def test_unknown_name_while_one_of_two_backends_is_down_names_only_the_down_one(
    start_proxy: StartProxy, fake: FakeVLLM, json_of: Any
) -> None:
    base = await start_proxy(
        backends=[{"url": fake.url, "name": "up"}, {"url": f"http://127.0.0.1:{closed_port()}", "name": "gpu2"}]
    )
    status, reply = await json_of(base, "/api/chat", {**CHAT, "model": "elsewhere"})
    assert status == 502
    assert reply["error"].startswith("vLLM backend gpu2 (")
    assert "backend up" not in reply["error"]
    status, _ = await json_of(base, "/api/chat", {**CHAT, "stream": False})  # the reachable one still serves
    assert status == 200


async def test_two_backends_down_are_both_named(start_proxy: StartProxy, json_of: Any) -> None:
    base = await start_proxy(backends=[{"url": f"http://127.0.0.1:{closed_port()}", "name": n} for n in ("a", "b")])
    status, reply = await json_of(base, "/api/generate", {"model": "tiny", "prompt": "hi"})
    assert status == 502
    assert reply["error"].startswith("2 vLLM backends are unreachable: vLLM backend a (")
    assert "; vLLM backend b (" in reply["error"]


async def test_a_configured_name_on_a_down_backend_is_502(start_proxy: StartProxy, fake: FakeVLLM, json_of: Any) -> None:
    base = await start_proxy(
        backends=[{"url": fake.url, "name": "up"}, {"url": f"http://127.0.0.1:{closed_port()}", "name": "gpu2"}],
        models=[{"name": "big", "backend": "gpu2", "served": "big"}],
    )
    status, reply = await json_of(base, "/api/chat", {**CHAT, "model": "big", "stream": False})
    assert status == 502
    assert reply["error"].startswith("vLLM backend gpu2 (")


async def test_404_only_when_every_backend_answered(start_proxy: StartProxy, fake: FakeVLLM, json_of: Any) -> None:
    base = await start_proxy(backends=[{"url": fake.url, "name": "up"}])
    assert await json_of(base, "/api/chat", {**CHAT, "model": "elsewhere"}) == (404, {"error": "model 'elsewhere' not found"})
    assert (await json_of(base, "/api/show", {"model": "elsewhere"}))[0] == 404


async def test_a_backend_that_comes_up_later_serves_its_names(start_proxy: StartProxy, json_of: Any) -> None:
    port = closed_port()
    base = await start_proxy(backends=[{"url": f"http://127.0.0.1:{port}", "name": "late"}])
    assert (await json_of(base, "/api/show", {"model": "tiny"}))[0] == 502
    late = FakeVLLM()
    await late.start(port)
    try:
        # An unknown name triggers a fresh listing at most once a second: poll until it did.
        for _ in range(100):
            status, _ = await json_of(base, "/api/show", {"model": "tiny"})
            if status == 200:
                break
            await asyncio.sleep(0.05)
        assert status == 200
        assert await json_of(base, "/api/show", {"model": "other"}) == (404, {"error": "model 'other' not found"})
    finally:
        await late.stop()


# -- vLLM's own error texts, from a backend that echoes the credentials it was sent ----------

ECHO = "not authorised: you sent Authorization: {authorization}"
OPENAI_CHAT = "/v1/chat/completions"


async def read_reply(session: aiohttp.ClientSession, base: str, path: str, body: Any) -> tuple[int, str]:
    async with session.post(base + path, json=body) as response:
        return response.status, await response.text()


@pytest.mark.parametrize(
    ("credentials", "secret", "sent"),
    [
        pytest.param({"api_key": API_KEY}, API_KEY, f"Bearer {API_KEY}", id="api_key"),
        pytest.param({"userinfo": True}, PASSWORD, "Basic b3BzOnBhNTUtdzByZC1TM0NSRVQ=", id="URL password"),
    ],
)
@pytest.mark.parametrize(
    ("path", "stream", "when"),
    [
        pytest.param("/api/chat", False, "status", id="chat-error-status"),
        pytest.param("/api/chat", True, "status", id="chat-stream-error-status"),
        pytest.param("/api/chat", True, "midstream", id="chat-stream-error-event"),
        pytest.param("/api/generate", False, "midstream", id="generate-error-event"),
        pytest.param(OPENAI_CHAT, False, "status", id="openai-error-status"),
        pytest.param(OPENAI_CHAT, True, "midstream", id="openai-stream-error-event"),
    ],
)  # fmt: skip
async def test_a_backend_error_that_echoes_a_credential_reaches_the_client_masked(
    start_proxy: StartProxy, fake: FakeVLLM, session: aiohttp.ClientSession,
    credentials: dict[str, Any], secret: str, sent: str, path: str, stream: bool, when: str,
) -> None:  # fmt: skip
    url = with_userinfo(fake.url) if credentials.get("userinfo") else fake.url
    base = await start_proxy(backends=[{"url": url, "name": "echo", "api_key": credentials.get("api_key")}])
    if when == "status":
        fake.fail_next = (401, ECHO)
    else:
        fake.midstream_error = ECHO
    body = {**({"model": "tiny", "prompt": "hi"} if path == "/api/generate" else CHAT), "stream": stream}
    status, text = await read_reply(session, base, path, body)
    # vLLM's status before the first byte (its event's 500 for a non-streamed reply); after it,
    # a 200 ending in the error line or event.
    assert status == (200 if stream and when == "midstream" else 401 if when == "status" else 500), text
    assert f"you sent Authorization: {sent.split()[0]} ***" in text, text
    assert secret not in text and sent.split()[1] not in text


def test_the_basic_token_of_a_url_password_is_a_secret_too() -> None:
    from proxy.redact import url_secrets  # noqa: PLC0415

    assert set(url_secrets("http://ops:pa55-w0rd-S3CRET@h:1")) == {PASSWORD, "b3BzOnBhNTUtdzByZC1TM0NSRVQ="}
