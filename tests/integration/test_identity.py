"""Who is asking, over real sockets: the key's name; else, for a client trusted to say so,
Open WebUI's forwarded user (its verified JWT when a secret is configured, else its plain
headers); else the client address. It shows in the log line as ``user=``/``user_source=``,
and a key's ``priority`` reaches vLLM only on backends with ``scheduling_policy: priority``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import aiohttp
import orjson
import pytest
import structlog
from structlog.testing import capture_logs

from tests.fakes.timers import FakeTimers
from tests.fakes.vllm import FakeVLLM

SECRET = "owui-shared-secret-0123456789"
OWUI_KEY, ALICE_KEY = "owui-connection-key-01", "alice-personal-key-01"
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": False}
OWUI = {"X-OpenWebUI-User-Email": "ana@example.com", "X-OpenWebUI-User-Name": "Ana B%C3%A9",
        "X-OpenWebUI-User-Id": "0f6c-ana", "X-OpenWebUI-User-Role": "user"}  # fmt: skip
Start = Callable[..., Awaitable[str]]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(claims: dict[str, Any], secret: str = SECRET, alg: str = "HS256") -> str:
    """A token as Open WebUI mints it (PyJWT, HS256) for its X-OpenWebUI-User-Jwt header."""
    head = b64(orjson.dumps({"alg": alg, "typ": "JWT"})) + "." + b64(orjson.dumps(claims))
    return head + "." + b64(hmac.new(secret.encode(), head.encode(), hashlib.sha256).digest())


# Tokens are made at collection; the tests may run many minutes later (CI runs e2e first).
NOW = int(time.time())
ANA = {"sub": "0f6c-ana", "email": "ana@example.com", "name": "Ana", "role": "user", "iss": "open-webui",
       "iat": NOW, "exp": NOW + 86400}  # fmt: skip
KEYS = [{"name": "open-webui", "key": OWUI_KEY, "trust_user_headers": True, "weight": 3, "priority": 2},
        {"name": "alice", "key": ALICE_KEY}]  # fmt: skip
CONFIGS: dict[str, dict[str, Any]] = {
    "untrusted": {},
    "trusted": {"trust_user_headers": True},
    "jwt": {"user_jwt_secret": SECRET},
    "keys": {"api_keys": KEYS},
    "keys+jwt": {"api_keys": KEYS, "user_jwt_secret": SECRET},
}
BAD = "unauthorized: invalid X-OpenWebUI-User-Jwt: "


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as entries:
        yield entries


@pytest.mark.parametrize(
    ("config", "headers", "expected"),
    [
        pytest.param("untrusted", OWUI, (200, "127.0.0.1", "address"), id="headers ignored by default"),
        pytest.param("trusted", OWUI, (200, "ana@example.com", "header"), id="trusted: the email"),
        pytest.param(
            "trusted",
            {"X-OpenWebUI-User-Name": "Ana B%C3%A9", "X-OpenWebUI-User-Id": "0f6c"},
            (200, "Ana Bé", "header"),
            id="trusted: else the name, URL-unquoted",
        ),  # fmt: skip
        pytest.param("trusted", {"X-OpenWebUI-User-Id": "0f6c-ana"}, (200, "0f6c-ana", "header"), id="trusted: else the id"),
        pytest.param(
            "trusted",
            {"X-OpenWebUI-User-Name": "Eve%0Auser=root%1B[31m"},
            (200, "Eveuser=root[31m", "header"),
            id="control characters stripped",
        ),  # fmt: skip
        pytest.param("trusted", {"X-OpenWebUI-User-Email": "a" * 5000}, (200, "a" * 128, "header"), id="length bounded"),
        pytest.param("trusted", {"X-OpenWebUI-User-Email": " \t "}, (200, "127.0.0.1", "address"), id="blank: the address"),
        pytest.param(
            "trusted", {"X-OpenWebUI-User-Jwt": jwt(ANA)}, (200, "127.0.0.1", "address"), id="no secret: a token is not believed"
        ),  # fmt: skip
        pytest.param("jwt", {"X-OpenWebUI-User-Jwt": jwt(ANA)}, (200, "ana@example.com", "jwt"), id="jwt: good token"),
        pytest.param("jwt", {"X-OpenWebUI-User-Jwt": jwt({**ANA, "email": ""})}, (200, "Ana", "jwt"), id="jwt: else the name"),
        pytest.param("jwt", {"X-OpenWebUI-User-Jwt": jwt({"sub": "u1"})}, (200, "u1", "jwt"), id="jwt: no exp, the sub"),
        pytest.param(
            "jwt", {"X-OpenWebUI-User-Jwt": jwt(ANA, secret="another")}, (401, BAD + "bad signature", ""), id="jwt: bad signature"
        ),  # fmt: skip
        pytest.param(
            "jwt", {"X-OpenWebUI-User-Jwt": jwt({**ANA, "exp": NOW - 5})}, (401, BAD + "expired", ""), id="jwt: expired"
        ),  # fmt: skip
        pytest.param(
            "jwt", {"X-OpenWebUI-User-Jwt": jwt(ANA, alg="none")}, (401, BAD + "not signed with HS256", ""), id="jwt: alg none"
        ),  # fmt: skip
        pytest.param("jwt", {"X-OpenWebUI-User-Jwt": "garbage"}, (401, BAD + "not a JWT", ""), id="jwt: not a token"),
        pytest.param("jwt", OWUI, (200, "127.0.0.1", "address"), id="jwt: plain headers are forged then"),
        pytest.param(
            "keys", {"Authorization": f"Bearer {ALICE_KEY}", **OWUI}, (200, "alice", "key"), id="key: its name, headers ignored"
        ),  # fmt: skip
        pytest.param(
            "keys",
            {"Authorization": f"Bearer {OWUI_KEY}", **OWUI},
            (200, "ana@example.com", "header"),
            id="key with trust_user_headers: the forwarded user",
        ),  # fmt: skip
        pytest.param(
            "keys",
            {"Authorization": f"Bearer {OWUI_KEY}"},
            (200, "open-webui", "key"),
            id="key with trust_user_headers, no headers: its name",
        ),  # fmt: skip
        pytest.param(
            "keys+jwt",
            {"Authorization": f"Bearer {OWUI_KEY}", "X-OpenWebUI-User-Jwt": jwt(ANA)},
            (200, "ana@example.com", "jwt"),
            id="key and a good token",
        ),  # fmt: skip
        pytest.param(
            "keys+jwt",
            {"Authorization": f"Bearer {ALICE_KEY}", "X-OpenWebUI-User-Jwt": jwt(ANA, secret="x")},
            (200, "alice", "key"),
            id="untrusted key: its token is not read",
        ),  # fmt: skip
    ],
)
async def test_who_is_asking(
    start_proxy: Start,
    fake: FakeVLLM,
    logs: list[MutableMapping[str, Any]],
    config: str,
    headers: dict[str, str],
    expected: tuple[int, str, str],
) -> None:
    url = await start_proxy(backends=[{"url": fake.url, "name": "fake"}], **CONFIGS[config])
    sent = len(fake.requests)
    async with aiohttp.ClientSession() as session, session.post(url + "/api/chat", json=CHAT, headers=headers) as reply:
        status, body = reply.status, await reply.json()
    (line,) = [e for e in logs if e.get("event") == "request"]
    if expected[0] == 401:
        assert (status, body) == (401, {"error": expected[1]})
        assert len(fake.requests) == sent
        assert line["status"] == 401 and line["user_source"] in ("address", "key")
    else:
        assert status == 200, body
        assert (line["user"], line["user_source"]) == expected[1:]


async def test_a_token_expires_on_the_proxys_clock(start_proxy: Start, fake: FakeVLLM) -> None:
    """``exp`` is checked against the clock the app was given (proxy/timers.py), so a test
    moves time past it instead of waiting."""
    clock = FakeTimers(now=float(NOW))
    url = await start_proxy(timers=clock.timers(), backends=[{"url": fake.url, "name": "fake"}], **CONFIGS["jwt"])
    headers = {"X-OpenWebUI-User-Jwt": jwt({**ANA, "exp": NOW + 300})}
    statuses = []
    async with aiohttp.ClientSession() as session:
        for step in (299.0, 2.0):
            await clock.advance(step)
            async with session.post(url + "/api/chat", json=CHAT, headers=headers) as reply:
                statuses.append((reply.status, (await reply.json()).get("error")))
    assert statuses == [(200, None), (401, BAD + "expired")]


@pytest.mark.parametrize(
    ("policy", "key", "client_priority", "native", "passthrough"),
    [
        pytest.param("priority", OWUI_KEY, None, 2, 2, id="priority policy: the key's priority"),
        pytest.param("priority", ALICE_KEY, None, None, None, id="priority policy, key without one: none"),
        pytest.param("fcfs", OWUI_KEY, None, None, None, id="fcfs: never sent"),
        pytest.param("priority", OWUI_KEY, -100, 2, 2, id="priority policy: a client's own is replaced"),
        pytest.param("priority", ALICE_KEY, -100, None, None, id="priority policy: a client's own is dropped"),
        pytest.param("fcfs", OWUI_KEY, 0, None, 0, id="fcfs: a client's own passes as before"),
    ],
)
async def test_a_keys_priority_reaches_vllm_only_with_priority_scheduling(
    start_proxy: Start, fake: FakeVLLM, policy: str, key: str, client_priority: int | None, native: int | None,
    passthrough: int | None,
) -> None:  # fmt: skip
    url = await start_proxy(backends=[{"url": fake.url, "name": "fake", "scheduling_policy": policy}], api_keys=KEYS)
    extra = {} if client_priority is None else {"priority": client_priority}
    calls = [("/api/chat", CHAT, "/v1/chat/completions", native),
             ("/api/generate", {"model": "tiny", "prompt": "hi"}, "/v1/chat/completions", native),  # the streamed fast path
             ("/api/generate", {"model": "tiny", "prompt": "hi", "raw": True, "stream": False}, "/v1/completions", native),
             ("/api/embed", {"model": "minilm", "input": "hi"}, "/v1/embeddings", native),
             ("/v1/chat/completions", {**CHAT, **extra}, "/v1/chat/completions", passthrough)]  # fmt: skip
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        for path, body, upstream, priority in calls:
            async with session.post(url + path, json=body) as reply:
                assert reply.status == 200, await reply.text()
                await reply.read()
            assert fake.last(upstream).get("priority", None) == priority, path
            assert ("priority" in fake.last(upstream)) == (priority is not None), path
