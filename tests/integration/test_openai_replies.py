"""A non-streamed ``/v1/*`` reply is vLLM's JSON as vLLM sent it, with the client's model
name; a reply that is not JSON is a 502 in OpenAI's error shape, never a 500."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
import pytest

from tests.fakes.raw import RawBackend, head
from tests.integration.test_faults import CHAT, send

StartProxy = Callable[..., Awaitable[str]]
REQUEST = {"model": "alias", "messages": [{"role": "user", "content": "hi"}]}
DEEP = b"[" * 300 + b"]" * 300  # orjson parses it but renders at most 254 levels


@pytest.fixture
async def proxy_url(start_proxy: StartProxy, raw: RawBackend) -> str:
    return await start_proxy(
        backends=[{"url": raw.url, "name": "broken"}],
        models=[{"name": "alias", "backend": "broken", "served": "tiny", "capabilities": ["completion"]}],
        timeouts={"idle": 0.3, "first_byte": 5},
    )


def reply_of(body: bytes) -> bytes:
    return head("200 OK", "Content-Type: application/json", f"Content-Length: {len(body)}") + body


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(b'{"id":"c","model":"tiny","n":18446744073709551616}',
                     b'{"id":"c","model":"alias","n":18446744073709551616}', id="integer past 64 bits kept"),
        pytest.param(b'{"id":"c","model":"tiny","x":' + DEEP + b"}", b'{"id":"c","model":"alias","x":' + DEEP + b"}",
                     id="300 levels deep kept"),
        pytest.param(b'{"id": "c", "model": "tiny"}', b'{"id":"c","model":"alias"}', id="spaced JSON rendered again"),
        pytest.param(b'{"id":"c"}', b'{"id":"c"}', id="no model field"),
        pytest.param(b"[1,2]", b"[1,2]", id="not an object"),
    ],
)  # fmt: skip
async def test_a_json_reply_is_relayed_with_the_clients_model_name(
    proxy_url: str, raw: RawBackend, body: bytes, expected: bytes
) -> None:
    raw.script[CHAT] = [reply_of(body)]
    reply = await send(proxy_url, CHAT, REQUEST)
    assert (reply.status, reply.headers["content-type"]) == (200, "application/json; charset=utf-8")
    assert reply.body == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(b"<html>Bad Gateway</html>", "vLLM backend broken sent a body that is not JSON", id="html"),
        pytest.param(b"", "vLLM backend broken sent a body that is not JSON", id="empty"),
        pytest.param(b'{"id":"\xe9"}', "vLLM backend broken sent a body that is not JSON", id="not UTF-8"),
        pytest.param(b'{"id":NaN}', "vLLM backend broken sent a body that is not JSON", id="NaN"),
        pytest.param(b'{"model": "tiny", "x": ' + DEEP + b"}", "vLLM backend broken sent JSON the proxy cannot relay",
                     id="spaced and too deep to render again"),
    ],
)  # fmt: skip
async def test_a_reply_that_is_not_json_is_a_502_in_openais_shape(
    proxy_url: str, raw: RawBackend, body: bytes, message: str
) -> None:
    raw.script[CHAT] = [reply_of(body)]
    reply = await send(proxy_url, CHAT, REQUEST)
    assert reply.status == 502, reply.body
    error = orjson.loads(reply.body)["error"]
    assert error["message"].startswith(message) and (error["type"], error["code"]) == ("api_error", 502)
