"""Property: no request body, encoding or header a client can send makes the proxy answer
5xx, and every 4xx it answers is JSON with an ``"error"``.

Hypothesis generates bodies for every POST route of both APIs: well-formed requests with
fields of the wrong type, odd values (integers past 64 bits, 1e300, deep nesting, empty
containers), raw bytes and JSON scalars, sent plain, gzip/deflate-compressed (validly or
not), chunked or not, under assorted Content-Types. The proxy runs in a thread over real
sockets in front of the fake vLLM, which answers malformed upstream bodies as vLLM does
(400), so any 5xx is the proxy's own fault.

Bounded for CI: derandomized (the same examples every run), no example database, a fixed
example count. ``PROXY_FUZZ_EXAMPLES=5000`` runs a larger sweep locally; the counts are
printed at the end (``-s``). A request the proxy does not answer within ``REPLY_TIMEOUT``
fails as such, naming the request (a chunked, truncated deflate body once hung here: see
test_bad_input.py::test_a_bad_chunked_compressed_body_is_answered_not_awaited).
"""

from __future__ import annotations

import asyncio
import collections
import gzip
import http.client
import os
import threading
import zlib
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.app import create_app
from proxy.config import from_mapping
from proxy.translate.options import DROPPED, MAPPED
from tests.fakes.vllm import FakeVLLM, Model

EXAMPLES = int(os.environ.get("PROXY_FUZZ_EXAMPLES", "1000"))
REPLY_TIMEOUT = 10.0  # seconds; a reply here takes milliseconds
ROUTES = ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/show", "/api/pull", "/api/push",
          "/api/create", "/api/copy", "/api/delete", "/v1/chat/completions", "/v1/completions", "/v1/embeddings")  # fmt: skip
# Encodings the proxy does not decode: a JSON 400 naming Content-Encoding (proxy/body.py).
UNDECODED = ("br", "zstd", "compress", "gzip, deflate")
# 501 on purpose, whatever the body (README: vLLM has no model-management API; /api/delete
# deletes only managed models' weights, and only with delete_weights: true).
UNSUPPORTED = ("/api/push", "/api/create", "/api/copy", "/api/delete")
# Ollama's own 500 for a non-streamed pull of a name its library lacks (tests/integration/test_pull.py).
OLLAMAS_PULL_500 = b'{"error":"pull model manifest: file does not exist"}'


class ProxyThread:
    """The fake vLLM and the proxy on one event loop in a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProxyThread:
        self._thread.start()
        assert self._ready.wait(30), "proxy did not start"
        return self

    def __exit__(self, *_: object) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        self.loop.run_until_complete(self._main())
        self.loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        fake = FakeVLLM({"tiny": Model(), "minilm": Model(kind="embedding", max_model_len=256),
                         "llava": Model(vision=True, tools=False)})  # fmt: skip
        await fake.start()
        config = from_mapping({"backends": [{"url": fake.url, "name": "fake"}], "log_level": "error",
                               "models": [{"name": "alias:1b", "backend": "fake", "served": "tiny",
                                           "options": {"temperature": 0.5}, "capabilities": ["completion", "thinking"]}]},
                              "fuzz")  # fmt: skip
        runner = web.AppRunner(create_app(config), access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()
        await fake.stop()


@pytest.fixture(scope="module")
def proxy_port() -> Iterator[int]:
    with ProxyThread() as proxy:
        yield proxy.port
    counts = ", ".join(f"{k}={v}" for k, v in sorted(STATS.items()))
    own = sum(n for code, n in STATS.items() if code.startswith("5") and code != "501")
    print(f"\nfuzz: {STATS['requests']} requests, {own} x 5xx besides 501 ({counts})")  # shown with -s


# -- strategies ---------------------------------------------------------------------------


def _number(n: int) -> Any:
    """orjson writes 64-bit integers only; wider ones go out as raw JSON text."""
    return n if -(2**63) <= n < 2**64 else orjson.Fragment(str(n).encode())


ODD_NUMBERS = st.sampled_from([0, -1, 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63) - 1, 2**64, 10**30, 1.5, -0.0, 1e20, -1e20,
                               1e300, 5e-324]).map(lambda n: _number(n) if isinstance(n, int) else n)  # fmt: skip
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70).map(_number), ODD_NUMBERS,
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
    st.sampled_from(["", "true", "1", "json", "5m", "-1", "high", "aGk=", "data:image/png;base64,aGk="]),
)  # fmt: skip
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)  # fmt: skip
DEEP = st.integers(min_value=100, max_value=1100).map(lambda n: orjson.Fragment(b"[" * n + b"]" * n))
VALUES = st.one_of(JSON_VALUES, DEEP)
MODELS = st.one_of(st.sampled_from(["tiny", "minilm", "llava", "alias:1b", "nope", "", "TINY:latest", "a/b/c/d:e"]), VALUES)
OPTION_KEYS = st.sampled_from(sorted({*MAPPED, *DROPPED, "unknown"}))
OPTIONS = st.one_of(VALUES, st.dictionaries(OPTION_KEYS, VALUES | ODD_NUMBERS, max_size=4))


@st.composite
def messages(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(VALUES)
    out = []
    for _ in range(draw(st.integers(0, 3))):
        message: dict[str, Any] = {"role": draw(st.sampled_from(["user", "assistant", "system", "tool", "USER"]) | VALUES)}
        for key in sorted(
            draw(st.sets(st.sampled_from(["content", "images", "tool_calls", "thinking", "tool_name", "tool_call_id"])))
        ):  # sorted: a set of str iterates by hash, which PYTHONHASHSEED changes per run
            if key == "tool_calls" and draw(st.booleans()):
                function = {"name": draw(st.text(max_size=5) | VALUES), "arguments": draw(VALUES)}
                message[key] = [{"function": function if draw(st.booleans()) else draw(VALUES)}]
            else:
                message[key] = draw(st.text(max_size=10) if key == "content" and draw(st.booleans()) else VALUES)
        out.append(message if draw(st.integers(0, 9)) else draw(VALUES))
    return out


FIELDS = {
    "/api/chat": ["messages", "stream", "options", "format", "tools", "think", "keep_alive", "logprobs", "top_logprobs"],
    "/api/generate": ["prompt", "suffix", "system", "images", "context", "raw", "template", "stream", "options", "format",
                      "think", "keep_alive", "logprobs", "top_logprobs"],
    "/api/embed": ["input", "truncate", "dimensions", "keep_alive", "options"],
    "/api/embeddings": ["prompt", "keep_alive", "options"],
    "/api/show": ["verbose", "name"],
    "/api/pull": ["stream", "insecure", "name"],
    "/api/delete": ["name"],
    "/v1/chat/completions": ["messages", "stream", "tools", "max_tokens", "stream_options", "temperature"],
    "/v1/completions": ["prompt", "stream", "max_tokens", "echo", "stream_options"],
    "/v1/embeddings": ["input", "encoding_format", "dimensions"],
}  # fmt: skip


@st.composite
def bodies(draw: st.DrawFn, path: str) -> bytes:
    kind = draw(st.integers(0, 19))
    if kind == 0:
        return draw(st.binary(max_size=64))
    if kind == 1:
        return orjson.dumps(draw(VALUES))
    body: dict[str, Any] = {"model": draw(MODELS)}
    for key in sorted(draw(st.sets(st.sampled_from(FIELDS.get(path, ["name"]))))):  # sorted: as above
        if key == "messages":
            body[key] = draw(messages())
        elif key == "options":
            body[key] = draw(OPTIONS)
        elif key == "stream":
            body[key] = draw(st.booleans() | VALUES)
        else:
            body[key] = draw(VALUES)
    raw = orjson.dumps(body)
    return raw[: draw(st.integers(0, len(raw)))] if kind == 2 else raw


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str], bool]:
    path = draw(st.sampled_from(ROUTES))
    raw = draw(bodies(path))
    headers = {"Content-Type": draw(st.sampled_from(["application/json", "application/x-www-form-urlencoded", "text/plain",
                                                     "application/json; charset=latin-1", "multipart/form-data"]))}  # fmt: skip
    encoding = draw(st.sampled_from(["", "", "", "gzip", "x-gzip", "deflate", "deflate-raw", "identity", "gzip-bad",
                                     "deflate-bad", "gzip-cut", "deflate-cut", *UNDECODED]))  # fmt: skip
    if encoding.startswith(("gzip", "x-gzip")) and not encoding.endswith("-bad"):
        raw = gzip.compress(raw)
    elif encoding in ("deflate", "deflate-cut"):
        raw = zlib.compress(raw)
    elif encoding == "deflate-raw":  # no zlib header: some clients send deflate so
        compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        raw = compressor.compress(raw) + compressor.flush()
    if encoding.endswith("-cut"):
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    if encoding:
        headers["Content-Encoding"] = encoding.removesuffix("-bad").removesuffix("-cut").removesuffix("-raw")
    return path, raw, headers, draw(st.booleans())  # chunked or Content-Length


# -- the property -------------------------------------------------------------------------

STATS: collections.Counter[str] = collections.Counter()


def send(port: int, path: str, raw: bytes, headers: dict[str, str], chunked: bool) -> tuple[int, str, bytes]:
    method = "DELETE" if path == "/api/delete" else "POST"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REPLY_TIMEOUT)
    try:
        if chunked:  # the head and each piece in its own write, as a streaming client sends them
            conn.request(method, path, body=iter([raw[:5], raw[5:]]), headers=headers, encode_chunked=True)
        else:
            conn.request(method, path, body=raw, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read()
    except TimeoutError:
        pytest.fail(f"no reply within {REPLY_TIMEOUT:g} s: {method} {path} chunked={chunked} {headers} {raw[:300]!r}")
    finally:
        conn.close()


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])  # fmt: skip
@given(request=requests())
def test_no_body_makes_the_proxy_answer_5xx_and_every_4xx_is_a_json_error(
    proxy_port: int, request: tuple[str, bytes, dict[str, str], bool]
) -> None:
    path, raw, headers, chunked = request
    status, ctype, reply = send(proxy_port, path, raw, headers, chunked)
    STATS["requests"] += 1
    STATS[str(status)] += 1
    ollamas = status == 500 and path == "/api/pull" and reply == OLLAMAS_PULL_500
    assert status < 500 or ollamas or (status == 501 and path in UNSUPPORTED), (status, path, headers, raw[:300], reply[:300])
    # A body in an encoding the proxy does not decode is refused, unless the route never reads it.
    undecoded = headers.get("Content-Encoding") in UNDECODED and not (status == 501 and path in UNSUPPORTED)
    assert status == 400 or not undecoded, (status, headers, reply[:300])
    if status >= 400:
        assert ctype.startswith("application/json"), (status, ctype, path, raw[:300], reply[:300])
        error = orjson.loads(reply)["error"]
        message = error["message"] if path.startswith("/v1/") else error
        assert isinstance(message, str) and message, reply
        assert "Content-Encoding" in message or not undecoded, reply
