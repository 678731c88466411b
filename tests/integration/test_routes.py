"""Every Ollama endpoint over a real socket: status, Content-Type, NDJSON framing, the
body the fake vLLM received, and what an Ollama client reads back."""

from __future__ import annotations

import asyncio
import io
import itertools
import re
import time
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from tests.fakes.timers import FakeTimers
from tests.fakes.vllm import FakeVLLM, Model, fake_vector
from tests.integration.helpers import (
    JSON,
    NDJSON,
    HeaderRecordingVLLM,
    assert_final,
    l2,
    ndjson,
    normalised,
    usage_of,
)

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
USER = [{"role": "user", "content": "hi there"}]


async def post(client: TestClient, path: str, body: Any, **kw: Any) -> tuple[int, str, bytes]:
    data = body if isinstance(body, bytes | str | io.BytesIO) else orjson.dumps(body)
    async with client.post(path, data=data, **kw) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.read()


# -- chat and generate, streaming and not ----------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "upstream", "text_of"),
    [
        pytest.param("/api/chat", {"model": "tiny", "messages": USER}, CHAT,
                     lambda o: o["message"]["content"], id="chat"),
        pytest.param("/api/generate", {"model": "tiny", "prompt": "hi there"}, CHAT,
                     lambda o: o["response"], id="generate"),
        pytest.param("/api/generate", {"model": "tiny", "prompt": "hi there", "raw": True}, COMPLETIONS,
                     lambda o: o["response"], id="generate-raw"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("stream", [pytest.param(True, id="stream-true"), pytest.param(None, id="stream-missing")])
async def test_streaming_reply_is_ndjson_ending_in_done(
    client: TestClient, fake: FakeVLLM, path: str, body: dict[str, Any], upstream: str, text_of: Any, stream: bool | None
) -> None:
    if stream is not None:
        body = {**body, "stream": stream}
    status, ctype, raw = await post(client, path, body)
    assert status == 200
    assert ctype == NDJSON
    objects = ndjson(raw)
    *chunks, final = objects
    assert chunks, "no content chunks before the final object"
    assert all(o["done"] is False and o["model"] == "tiny" for o in chunks)
    assert "".join(text_of(o) for o in objects) == "Hello, world!"
    assert_final(final, usage_of(fake, upstream))
    sent = fake.last(upstream)
    assert sent["model"] == "tiny"
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("path", "body", "upstream", "text_of"),
    [
        pytest.param("/api/chat", {"model": "tiny", "messages": USER}, CHAT,
                     lambda o: o["message"]["content"], id="chat"),
        pytest.param("/api/generate", {"model": "tiny", "prompt": "hi there"}, CHAT,
                     lambda o: o["response"], id="generate"),
        pytest.param("/api/generate", {"model": "tiny", "prompt": "hi there", "raw": True}, COMPLETIONS,
                     lambda o: o["response"], id="generate-raw"),
    ],
)  # fmt: skip
async def test_non_streaming_reply_is_one_object_with_the_whole_text(
    client: TestClient, fake: FakeVLLM, path: str, body: dict[str, Any], upstream: str, text_of: Any
) -> None:
    status, ctype, raw = await post(client, path, {**body, "stream": False})
    assert status == 200
    assert ctype == JSON
    assert raw.count(b"\n") == 0
    reply = orjson.loads(raw)
    assert reply["model"] == "tiny"
    assert text_of(reply) == "Hello, world!"
    assert_final(reply, usage_of(fake, upstream))
    if path == "/api/chat":
        assert reply["message"]["role"] == "assistant"
    # the proxy still streams upstream, to measure time to first token
    assert fake.last(upstream)["stream"] is True


@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param("TINY", id="upper-case"),
        pytest.param("tiny:latest", id="explicit-tag"),
        pytest.param("library/tiny", id="namespace"),
        pytest.param("registry.ollama.ai/library/tiny:latest", id="fully-qualified"),
        pytest.param("Tiny:Latest", id="mixed-case-tag"),
    ],
)
@pytest.mark.parametrize("stream", [pytest.param(True, id="stream"), pytest.param(False, id="no-stream")])
async def test_model_is_echoed_as_the_request_spelled_it(client: TestClient, fake: FakeVLLM, spelling: str, stream: bool) -> None:
    for path, body in (("/api/chat", {"messages": USER}), ("/api/generate", {"prompt": "hi"})):
        status, _, raw = await post(client, path, {"model": spelling, "stream": stream, **body})
        assert status == 200, raw
        objects = ndjson(raw) if stream else [orjson.loads(raw)]
        assert {o["model"] for o in objects} == {spelling}
        assert fake.last(CHAT)["model"] == "tiny"  # the served name goes upstream


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        pytest.param("/api/chat", {"model": "tiny:8b", "messages": USER}, "model 'tiny:8b' not found", id="chat-other-tag"),
        pytest.param("/api/generate", {"model": "tiny:8b", "prompt": "hi"}, "model 'tiny:8b' not found", id="generate-other-tag"),
        pytest.param("/api/show", {"model": "tiny:8b"}, "model 'tiny:8b' not found", id="show-other-tag"),
        pytest.param("/api/chat", {"model": "nope", "messages": USER}, "model 'nope' not found", id="chat-unknown"),
        pytest.param("/api/embed", {"model": "nope", "input": "x"}, 'model "nope" not found, try pulling it first', id="embed-unknown"),
        pytest.param("/api/embeddings", {"model": "nope", "prompt": "x"}, 'model "nope" not found, try pulling it first',
                     id="embeddings-unknown"),
        pytest.param("/api/generate", {"prompt": "hi"}, "model '' not found", id="generate-no-model"),
        pytest.param("/api/chat", {"model": "nope", "messages": []}, "model 'nope' not found", id="unload-unknown"),
    ],
)  # fmt: skip
async def test_unknown_model_is_404_with_ollamas_text(
    client: TestClient, upstream_count: Any, path: str, body: dict[str, Any], expected: str
) -> None:
    before = upstream_count()
    status, ctype, raw = await post(client, path, body)
    assert (status, ctype) == (404, JSON)
    assert orjson.loads(raw) == {"error": expected}
    assert upstream_count() == before


# -- what the fake vLLM receives --------------------------------------------------------


@pytest.mark.parametrize("path", [pytest.param("/api/chat", id="chat"), pytest.param("/api/generate", id="generate")])
async def test_options_are_mapped_to_vllm_fields(client: TestClient, fake: FakeVLLM, path: str) -> None:
    options = {"num_predict": 2, "repeat_penalty": 1.1, "top_k": 0, "seed": -1, "temperature": 0.5,
               "top_p": 0.9, "stop": ["a", "a", "b"], "num_ctx": 8192, "mirostat": 1}  # fmt: skip
    body: dict[str, Any] = {"model": "tiny", "stream": False, "options": options}
    body.update({"messages": USER} if path == "/api/chat" else {"prompt": "hi there"})
    status, _, raw = await post(client, path, body)
    assert status == 200, raw
    sent = fake.last(CHAT)
    assert sent["max_tokens"] == 2
    assert sent["repetition_penalty"] == 1.1
    assert sent["top_k"] == -1
    assert "seed" not in sent
    assert sent["temperature"] == 0.5
    assert sent["top_p"] == 0.9
    assert sent["stop"] == ["a", "b"]
    for absent in ("num_predict", "repeat_penalty", "num_ctx", "mirostat", "options"):
        assert absent not in sent
    reply = orjson.loads(raw)
    assert reply["done_reason"] == "length"  # vLLM stopped at max_tokens
    assert reply["eval_count"] == 2


async def test_seed_and_top_k_pass_through_when_set(client: TestClient, fake: FakeVLLM) -> None:
    body = {"model": "tiny", "messages": USER, "stream": False, "options": {"seed": 42, "top_k": 40}}
    status, _, _ = await post(client, "/api/chat", body)
    assert status == 200
    assert fake.last(CHAT)["seed"] == 42
    assert fake.last(CHAT)["top_k"] == 40


@pytest.mark.parametrize("stream", [pytest.param(True, id="stream"), pytest.param(False, id="no-stream")])
async def test_empty_tools_are_not_forwarded(client: TestClient, fake: FakeVLLM, stream: bool) -> None:
    # ollama-python always sends "tools": []; vLLM answers that with 400
    status, _, raw = await post(client, "/api/chat", {"model": "tiny", "messages": USER, "tools": [], "stream": stream})
    assert status == 200, raw
    assert "tools" not in fake.last(CHAT)


async def test_tools_are_forwarded(client: TestClient, fake: FakeVLLM) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    status, _, _ = await post(client, "/api/chat", {"model": "tiny", "messages": USER, "tools": tools, "stream": False})
    assert status == 200
    assert fake.last(CHAT)["tools"] == tools


SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        pytest.param("json", {"type": "json_object"}, id="json"),
        pytest.param(SCHEMA, {"type": "json_schema", "json_schema": {"name": "schema", "schema": SCHEMA}}, id="schema"),
        pytest.param("", None, id="empty-string"),
        pytest.param(None, None, id="null"),
    ],
)
@pytest.mark.parametrize(
    ("path", "extra", "upstream"),
    [
        pytest.param("/api/chat", {"messages": USER}, CHAT, id="chat"),
        pytest.param("/api/generate", {"prompt": "hi"}, CHAT, id="generate"),
        pytest.param("/api/generate", {"prompt": "hi", "raw": True}, COMPLETIONS, id="generate-raw"),
    ],
)
async def test_format_becomes_response_format(
    client: TestClient, fake: FakeVLLM, fmt: Any, expected: Any, path: str, extra: dict[str, Any], upstream: str
) -> None:
    status, _, raw = await post(client, path, {"model": "tiny", "format": fmt, "stream": False, **extra})
    assert status == 200, raw
    assert fake.last(upstream).get("response_format") == expected


async def test_invalid_format_is_400(client: TestClient, upstream_count: Any) -> None:
    before = upstream_count()
    status, ctype, raw = await post(client, "/api/chat", {"model": "tiny", "messages": USER, "format": "xml"})
    assert (status, ctype) == (400, JSON)
    assert orjson.loads(raw) == {"error": 'invalid format: "xml"; expected "json" or a valid JSON Schema object'}
    assert upstream_count() == before


@pytest.mark.parametrize(
    ("options", "max_tokens"),
    [
        pytest.param(None, 2048, id="default-is-the-context"),
        pytest.param({"num_predict": 3}, 3, id="num_predict"),
        pytest.param({"num_predict": -1}, 2048, id="unlimited"),
    ],
)
@pytest.mark.parametrize("stream", [pytest.param(True, id="stream"), pytest.param(False, id="no-stream")])
async def test_generate_raw_uses_completions_with_max_tokens(
    client: TestClient, fake: FakeVLLM, options: Any, max_tokens: int, stream: bool
) -> None:
    body = {"model": "tiny", "prompt": "[INST] hi [/INST]", "raw": True, "stream": stream, "options": options}
    status, _, raw = await post(client, "/api/generate", body)
    assert status == 200, raw
    sent = fake.last(COMPLETIONS)
    assert sent["prompt"] == "[INST] hi [/INST]"
    assert sent["max_tokens"] == max_tokens  # never vLLM's 16-token default
    assert "messages" not in sent
    objects = ndjson(raw) if stream else [orjson.loads(raw)]
    assert "".join(o["response"] for o in objects) == "".join(fake.reply.tokens[:max_tokens])
    assert objects[-1]["done_reason"] == ("length" if max_tokens < len(fake.reply.tokens) else "stop")
    assert all("context" not in o for o in objects)


async def test_generate_with_system_sends_a_system_message(client: TestClient, fake: FakeVLLM) -> None:
    body = {"model": "tiny", "prompt": "hi", "system": "Be terse.", "stream": False}
    status, _, _ = await post(client, "/api/generate", body)
    assert status == 200
    assert fake.last(CHAT)["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "hi"},
    ]


async def test_generate_raw_with_system_is_400(client: TestClient, upstream_count: Any) -> None:
    before = upstream_count()
    body = {"model": "tiny", "prompt": "hi", "system": "x", "raw": True}
    status, _, raw = await post(client, "/api/generate", body)
    assert status == 400
    assert orjson.loads(raw) == {"error": "raw mode does not support template, system, or context"}
    assert upstream_count() == before


async def test_chat_messages_reach_vllm_in_order(client: TestClient, fake: FakeVLLM) -> None:
    messages = [{"role": "System", "content": "s"}, {"role": "user", "content": "u"},
                {"role": "assistant", "content": "a"}, {"role": "user", "content": "v"}]  # fmt: skip
    status, _, _ = await post(client, "/api/chat", {"model": "tiny", "messages": messages, "stream": False})
    assert status == 200
    assert fake.last(CHAT)["messages"] == [{**m, "role": m["role"].lower()} for m in messages]


# -- load and unload --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keep_alive", "reason"),
    [
        pytest.param(None, "load", id="absent"),
        pytest.param("5m", "load", id="5m"),
        pytest.param(-1, "load", id="forever"),
        pytest.param(0, "unload", id="int-0"),
        pytest.param(0.0, "unload", id="float-0"),
        pytest.param("0", "unload", id="string-0"),
        pytest.param("0s", "unload", id="string-0s"),
    ],
)
@pytest.mark.parametrize(
    ("path", "empty", "extra"),
    [
        pytest.param("/api/chat", {"message": {"role": "assistant", "content": ""}}, {"messages": []}, id="chat"),
        pytest.param("/api/chat", {"message": {"role": "assistant", "content": ""}}, {}, id="chat-no-messages"),
        pytest.param("/api/generate", {"response": ""}, {"prompt": ""}, id="generate"),
        pytest.param("/api/generate", {"response": ""}, {}, id="generate-no-prompt"),
    ],
)
async def test_load_and_unload_answer_one_object_and_send_nothing_upstream(
    client: TestClient, upstream_count: Any, keep_alive: Any, reason: str, path: str, empty: dict[str, Any],
    extra: dict[str, Any],
) -> None:  # fmt: skip
    before = upstream_count()
    # an embedding model too: load/unload is answered before any capability check
    for model, stream in itertools.product(("Tiny", "minilm"), (None, True, False)):
        body: dict[str, Any] = {"model": model, **extra}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        if stream is not None:
            body["stream"] = stream
        status, ctype, raw = await post(client, path, body)
        assert status == 200, raw
        if stream is False:
            assert ctype == JSON
            objects = [orjson.loads(raw)]
        else:  # one object even when streaming, NDJSON-typed
            assert ctype == NDJSON
            objects = ndjson(raw)
        assert len(objects) == 1
        (reply,) = objects
        assert reply == {"model": model, "created_at": reply["created_at"], **empty, "done": True, "done_reason": reason}
    assert upstream_count() == before


@pytest.mark.parametrize(
    ("keep_alive", "error"),
    [
        pytest.param("10", 'time: missing unit in duration "10"', id="missing-unit"),
        pytest.param("soon", 'time: invalid duration "soon"', id="invalid"),
    ],
)
async def test_bad_keep_alive_is_400(client: TestClient, keep_alive: str, error: str) -> None:
    status, _, raw = await post(client, "/api/chat", {"model": "tiny", "messages": [], "keep_alive": keep_alive})
    assert status == 400
    assert orjson.loads(raw) == {"error": error}


# -- capabilities -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        pytest.param("/api/chat", {"model": "minilm", "messages": USER}, '"minilm" does not support chat', id="chat"),
        pytest.param("/api/chat", {"model": "MiniLM", "messages": USER}, '"MiniLM" does not support chat', id="chat-as-spelled"),
        pytest.param("/api/generate", {"model": "minilm", "prompt": "hi"}, '"minilm" does not support generate', id="generate"),
    ],
)
@pytest.mark.parametrize("stream", [pytest.param(True, id="stream"), pytest.param(False, id="no-stream")])
async def test_generation_on_an_embedding_model_is_400(
    client: TestClient, upstream_count: Any, path: str, body: dict[str, Any], error: str, stream: bool
) -> None:
    before = upstream_count()
    status, ctype, raw = await post(client, path, {**body, "stream": stream})
    assert (status, ctype) == (400, JSON)
    assert orjson.loads(raw) == {"error": error}
    assert upstream_count() == before


# -- embeddings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "inputs",
    [
        pytest.param("why is the sky blue", id="string"),
        pytest.param(["why is the sky blue", "because", "of Rayleigh scattering"], id="list"),
        pytest.param(["one"], id="list-of-one"),
    ],
)
async def test_embed_returns_normalised_vectors_in_input_order(client: TestClient, fake: FakeVLLM, inputs: Any) -> None:
    status, ctype, raw = await post(client, "/api/embed", {"model": "minilm", "input": inputs})
    assert (status, ctype) == (200, JSON)
    reply = orjson.loads(raw)
    texts = [inputs] if isinstance(inputs, str) else inputs
    assert reply["model"] == "minilm"
    assert len(reply["embeddings"]) == len(texts)
    for vector, text in zip(reply["embeddings"], texts, strict=True):
        assert l2(vector) == pytest.approx(1.0)
        assert vector == pytest.approx(normalised(fake_vector(text)))
    sent = fake.last("/v1/embeddings")
    assert sent["model"] == "minilm"
    assert sent["input"] == texts
    assert reply["prompt_eval_count"] == sum(len(t.split()) + 2 for t in texts)  # the fake's usage
    for key in ("total_duration", "load_duration"):
        assert type(reply[key]) is int and reply[key] > 0


@pytest.mark.parametrize("dimensions", [pytest.param(3, id="3"), pytest.param(5, id="5")])
async def test_embed_dimensions_cut_and_renormalise(client: TestClient, dimensions: int) -> None:
    status, _, raw = await post(client, "/api/embed", {"model": "minilm", "input": ["a", "b"], "dimensions": dimensions})
    assert status == 200
    vectors = orjson.loads(raw)["embeddings"]
    for vector, text in zip(vectors, ["a", "b"], strict=True):
        assert len(vector) == dimensions
        assert l2(vector) == pytest.approx(1.0)
        assert vector == pytest.approx(normalised(fake_vector(text)[:dimensions]))


@pytest.mark.parametrize("inputs", [pytest.param("", id="empty-string"), pytest.param([], id="empty-list"),
                                    pytest.param(None, id="missing")])  # fmt: skip
async def test_embed_empty_input_loads_and_returns_no_vectors(client: TestClient, upstream_count: Any, inputs: Any) -> None:
    before = upstream_count()
    body: dict[str, Any] = {"model": "minilm"}
    if inputs is not None:
        body["input"] = inputs
    status, ctype, raw = await post(client, "/api/embed", body)
    assert (status, ctype) == (200, JSON)
    reply = orjson.loads(raw)
    assert reply["embeddings"] == []
    assert reply["model"] == "minilm"
    assert upstream_count() == before


async def test_embed_non_string_input_is_400(client: TestClient) -> None:
    status, _, raw = await post(client, "/api/embed", {"model": "minilm", "input": ["a", 3]})
    assert status == 400
    assert orjson.loads(raw) == {"error": "invalid input type"}


async def test_legacy_embeddings_return_the_raw_vector(client: TestClient, fake: FakeVLLM) -> None:
    status, ctype, raw = await post(client, "/api/embeddings", {"model": "minilm", "prompt": "why is the sky blue"})
    assert (status, ctype) == (200, JSON)
    reply = orjson.loads(raw)
    assert reply == {"embedding": fake_vector("why is the sky blue")}  # not normalised
    assert l2(reply["embedding"]) != pytest.approx(1.0)
    assert fake.last("/v1/embeddings")["input"] == ["why is the sky blue"]


async def test_legacy_embeddings_empty_prompt_is_an_empty_vector(client: TestClient, upstream_count: Any) -> None:
    before = upstream_count()
    status, _, raw = await post(client, "/api/embeddings", {"model": "minilm", "prompt": ""})
    assert status == 200
    assert orjson.loads(raw) == {"embedding": []}
    assert upstream_count() == before


# -- model listings -----------------------------------------------------------------------


async def test_tags_lists_every_served_model(client: TestClient) -> None:
    async with client.get("/api/tags") as r:
        assert (r.status, r.headers["Content-Type"]) == (200, JSON)
        reply = await r.json()
    models = reply["models"]
    assert isinstance(models, list)
    assert {m["name"] for m in models} == {"tiny:latest", "minilm:latest", "llava:latest"}
    for m in models:
        assert m["name"] == m["model"]
        assert re.fullmatch(r"[^:]+:[^:]+", m["name"])
        assert re.fullmatch(r"[0-9a-f]{64}", m["digest"])
        assert type(m["size"]) is int
        details = m["details"]
        assert isinstance(details["families"], list) and details["families"]
        assert details["family"] in details["families"]
        for key in ("parent_model", "format", "parameter_size", "quantization_level"):
            assert isinstance(details[key], str)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", m["modified_at"])
    caps = {m["name"]: m["capabilities"] for m in models}
    assert caps == {
        "tiny:latest": ["completion", "tools"],
        "minilm:latest": ["embedding"],
        "llava:latest": ["completion", "vision"],
    }  # what the fake's models accept


@pytest.mark.parametrize(
    ("name", "capability", "context"),
    [
        pytest.param("tiny", ["completion", "tools"], 2048, id="tiny"),
        pytest.param("TINY:latest", ["completion", "tools"], 2048, id="tiny-other-spelling"),
        pytest.param("minilm", ["embedding"], 256, id="minilm"),
        pytest.param("llava", ["completion", "vision"], 2048, id="llava"),
    ],
)
@pytest.mark.parametrize("key", [pytest.param("model", id="model"), pytest.param("name", id="deprecated-name")])
async def test_show_reports_model_info_and_capabilities(
    client: TestClient, name: str, capability: list[str], context: int, key: str
) -> None:
    status, ctype, raw = await post(client, "/api/show", {key: name})
    assert (status, ctype) == (200, JSON)
    reply = orjson.loads(raw)
    info = reply["model_info"]
    arch = info["general.architecture"]
    assert info[f"{arch}.context_length"] == context
    assert reply["capabilities"] == capability
    assert reply["details"]["family"] == arch
    assert reply["modelfile"].startswith('# Modelfile generated by "ollama show"')
    assert isinstance(reply["parameters"], str) and isinstance(reply["template"], str)


async def test_show_without_model_is_400(client: TestClient) -> None:
    status, _, raw = await post(client, "/api/show", {})
    assert status == 400
    assert orjson.loads(raw) == {"error": "model is required"}


async def test_ps_lists_running_models(client: TestClient) -> None:
    async with client.get("/api/ps") as r:
        assert (r.status, r.headers["Content-Type"]) == (200, JSON)
        models = (await r.json())["models"]
    assert {m["model"] for m in models} == {"tiny:latest", "minilm:latest", "llava:latest"}
    for m in models:
        assert m["name"] == m["model"]
        assert re.fullmatch(r"[0-9a-f]{64}", m["digest"])
        assert type(m["size_vram"]) is int
        assert int(m["expires_at"][:4]) > 2100  # loaded "forever"
    assert {m["model"]: m["context_length"] for m in models} == {"tiny:latest": 2048, "minilm:latest": 256,
                                                                 "llava:latest": 2048}  # fmt: skip


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_version_is_a_numeric_dotted_recent_version(client: TestClient, method: str) -> None:
    async with client.request(method, "/api/version") as r:
        assert (r.status, r.headers["Content-Type"]) == (200, JSON)
        raw = await r.read()
    if method == "HEAD":
        assert raw == b""
        return
    version = orjson.loads(raw)["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    assert tuple(int(p) for p in version.split(".")) >= (0, 6, 4)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_root_says_ollama_is_running(client: TestClient, method: str) -> None:
    async with client.request(method, "/") as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert await r.read() == (b"" if method == "HEAD" else b"Ollama is running")


@pytest.mark.parametrize("path", ["/api/tags", "/api/ps"])
async def test_head_on_listings(client: TestClient, path: str) -> None:
    async with client.head(path) as r:
        assert r.status == 200
        assert await r.read() == b""


# -- request parsing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param("application/x-www-form-urlencoded", id="curl-d"),
        pytest.param("text/plain", id="text"),
        pytest.param(None, id="none"),
        pytest.param("application/json", id="json"),
    ],
)
@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/api/chat", {"model": "tiny", "messages": USER, "stream": False}, id="chat"),
        pytest.param("/api/generate", {"model": "tiny", "prompt": "hi", "stream": False}, id="generate"),
        pytest.param("/api/embed", {"model": "minilm", "input": "hi"}, id="embed"),
        pytest.param("/api/show", {"model": "tiny"}, id="show"),
    ],
)
async def test_body_is_json_whatever_the_content_type(
    client: TestClient, path: str, body: dict[str, Any], content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {"Content-Type": ""}
    status, ctype, raw = await post(client, path, orjson.dumps(body), headers=headers)
    assert (status, ctype) == (200, JSON), raw


async def test_unknown_fields_are_ignored(client: TestClient, fake: FakeVLLM) -> None:
    body = {"model": "tiny", "messages": [{**USER[0], "extra": 1}], "stream": False, "frobnicate": {"x": [1]},
            "truncate": True, "shift": True, "options": {"not_an_option": 3}}  # fmt: skip
    status, _, raw = await post(client, "/api/chat", body)
    assert status == 200, raw
    sent = fake.last(CHAT)
    assert "frobnicate" not in sent and "not_an_option" not in sent
    assert orjson.loads(raw)["message"]["content"] == "Hello, world!"


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/show", "/api/pull"])
async def test_malformed_body_is_400_json(client: TestClient, path: str) -> None:
    for raw_body, expected in MALFORMED:
        status, ctype, raw = await post(client, path, raw_body)
        assert (status, ctype) == (400, JSON), raw_body
        reply = orjson.loads(raw)
        assert list(reply) == ["error"] and isinstance(reply["error"], str) and reply["error"]
        if expected:
            assert reply["error"] == expected


MALFORMED = [
    (b"", "missing request body"),
    (b"  \n", "missing request body"),
    (b'{"model": "tiny",', None),  # truncated JSON
    (b"model=tiny", None),  # form fields
    (b"[1, 2]", None),
    (b'"tiny"', None),
]


async def test_null_body_is_an_empty_request_as_in_go(client: TestClient) -> None:
    """Go decodes `null` into a zero request: no model, so each endpoint's own answer."""
    for path, expected in (("/api/chat", (400, "model is required")), ("/api/generate", (404, "model '' not found"))):
        status, _, raw = await post(client, path, b"null")
        assert (status, orjson.loads(raw)["error"]) == expected


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/api/chat", {"model": 5, "messages": USER}, id="chat-model-number"),
        pytest.param("/api/chat", {"model": ["tiny"], "messages": USER}, id="chat-model-list"),
        pytest.param("/api/chat", {"model": "tiny", "messages": "x"}, id="chat-messages-string"),
        pytest.param("/api/chat", {"model": "tiny", "messages": {"role": "user"}}, id="chat-messages-object"),
        pytest.param("/api/chat", {"model": "tiny", "messages": ["hi"]}, id="chat-message-string"),
        pytest.param("/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": 5}]}, id="chat-content-number"),
        pytest.param("/api/chat", {"model": "tiny", "messages": USER, "stream": "yes"}, id="chat-stream-string"),
        pytest.param("/api/chat", {"model": "tiny", "messages": USER, "options": "hot"}, id="chat-options-string"),
        pytest.param("/api/chat", {"model": "tiny", "messages": USER, "options": {"temperature": "hot"}},
                     id="chat-option-type"),
        pytest.param("/api/chat", {"model": "tiny", "messages": USER, "tools": "x"}, id="chat-tools-string"),
        pytest.param("/api/chat", {"model": "tiny", "messages": USER, "keep_alive": True}, id="chat-keep-alive-bool"),
        pytest.param("/api/chat", {"model": "tiny", "messages": USER, "think": "lots"}, id="chat-think-invalid"),
        pytest.param("/api/chat", {"model": "", "messages": USER}, id="chat-model-empty"),
        pytest.param("/api/generate", {"model": 5, "prompt": "hi"}, id="generate-model-number"),
        pytest.param("/api/generate", {"model": "tiny", "prompt": 5}, id="generate-prompt-number"),
        pytest.param("/api/generate", {"model": "tiny", "prompt": ["hi"]}, id="generate-prompt-list"),
        pytest.param("/api/generate", {"model": "tiny", "prompt": "hi", "options": {"num_predict": "x"}},
                     id="generate-option-type"),
        pytest.param("/api/embed", {"model": 5, "input": "x"}, id="embed-model-number"),
        pytest.param("/api/embed", {"model": "minilm", "input": 5}, id="embed-input-number"),
        pytest.param("/api/embed", {"model": "minilm", "input": "x", "truncate": "no"}, id="embed-truncate-string"),
        pytest.param("/api/embed", {"model": "minilm", "input": "x", "dimensions": "3"}, id="embed-dimensions-string"),
        pytest.param("/api/embeddings", {"model": "minilm", "prompt": 5}, id="embeddings-prompt-number"),
        pytest.param("/api/embeddings", {"model": 5, "prompt": "x"}, id="embeddings-model-number"),
        pytest.param("/api/show", {"model": 5}, id="show-model-number"),
        pytest.param("/api/pull", {"model": 5}, id="pull-model-number"),
        pytest.param("/api/pull", {"model": "tiny", "stream": "yes"}, id="pull-stream-string"),
    ],
)  # fmt: skip
async def test_wrong_field_type_is_400_never_422_or_500(
    client: TestClient, upstream_count: Any, path: str, body: dict[str, Any]
) -> None:
    before = upstream_count()
    status, ctype, raw = await post(client, path, body)
    assert (status, ctype) == (400, JSON), raw
    reply = orjson.loads(raw)
    assert list(reply) == ["error"] and reply["error"]
    assert upstream_count() == before


async def test_messages_type_error_uses_gos_wording(client: TestClient) -> None:
    status, _, raw = await post(client, "/api/chat", {"model": "tiny", "messages": "x"})
    assert status == 400
    assert orjson.loads(raw)["error"] == (
        "json: cannot unmarshal string into Go struct field ChatRequest.messages of type []api.Message"
    )


@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        pytest.param("/api/chat", {"messages": USER}, "model is required", id="chat"),
        pytest.param("/api/embed", {"input": "x"}, "model is required", id="embed"),
        pytest.param("/api/embeddings", {"prompt": "x"}, "model is required", id="embeddings"),
    ],
)
async def test_missing_model_is_400(client: TestClient, path: str, body: dict[str, Any], error: str) -> None:
    status, _, raw = await post(client, path, body)
    assert status == 400
    assert orjson.loads(raw) == {"error": error}


# -- routing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("GET", "/nope", id="unknown"),
        pytest.param("POST", "/api/nope", id="unknown-api"),
        pytest.param("POST", "/api/chat/", id="trailing-slash"),
        pytest.param("GET", "/api", id="api-root"),
    ],
)
async def test_unknown_path_is_gins_404(client: TestClient, method: str, path: str) -> None:
    async with client.request(method, path) as r:
        assert r.status == 404
        assert await r.text() == "404 page not found"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("GET", "/api/chat", id="get-chat"),
        pytest.param("GET", "/api/generate", id="get-generate"),
        pytest.param("PUT", "/api/embed", id="put-embed"),
        pytest.param("POST", "/api/tags", id="post-tags"),
        pytest.param("POST", "/api/delete", id="post-delete"),
        pytest.param("DELETE", "/api/version", id="delete-version"),
    ],
)
async def test_wrong_method_is_405(client: TestClient, method: str, path: str) -> None:
    async with client.request(method, path) as r:
        assert r.status == 405
        assert await r.text() == "405 method not allowed"


# -- model management ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("POST", "/api/push", {"model": "tiny"}, id="push"),
        pytest.param("POST", "/api/create", {"model": "mine", "from": "tiny"}, id="create"),
        pytest.param("POST", "/api/copy", {"source": "tiny", "destination": "mine"}, id="copy"),
        pytest.param("DELETE", "/api/delete", {"model": "tiny"}, id="delete"),
        pytest.param("POST", "/api/blobs/sha256:" + "0" * 64, b"bytes", id="blob-upload"),
        pytest.param("HEAD", "/api/blobs/sha256:" + "0" * 64, None, id="blob-head"),
    ],
)
async def test_model_management_is_a_json_error_not_500(client: TestClient, method: str, path: str, body: Any) -> None:
    data = body if body is None or isinstance(body, bytes) else orjson.dumps(body)
    async with client.request(method, path, data=data) as r:
        assert 400 <= r.status < 600 and r.status != 500
        if method == "HEAD":
            assert await r.read() == b""
            return
        assert r.headers["Content-Type"] == JSON
        reply = await r.json()
    assert list(reply) == ["error"] and reply["error"]


async def test_pull_unknown_model_is_ollamas_error(client: TestClient) -> None:
    """Ollama streams the error after `pulling manifest` (200), or answers 500 without a stream."""
    status, ctype, raw = await post(client, "/api/pull", {"model": "never-heard-of-it"})
    assert (status, ctype) == (200, NDJSON)
    assert ndjson(raw) == [{"status": "pulling manifest"}, {"error": "pull model manifest: file does not exist"}]
    status, ctype, raw = await post(client, "/api/pull", {"model": "never-heard-of-it", "stream": False})
    assert (status, ctype, orjson.loads(raw)) == (500, JSON, {"error": "pull model manifest: file does not exist"})


@pytest.mark.parametrize("key", ["model", "name"])
@pytest.mark.parametrize("stream", [pytest.param(None, id="stream-missing"), pytest.param(True, id="stream"),
                                    pytest.param(False, id="no-stream")])  # fmt: skip
async def test_pull_of_a_served_model_succeeds(client: TestClient, upstream_count: Any, key: str, stream: bool | None) -> None:
    body: dict[str, Any] = {key: "tiny"}
    if stream is not None:
        body["stream"] = stream
    before = upstream_count()
    status, ctype, raw = await post(client, "/api/pull", body)
    assert status == 200
    if stream is False:
        assert ctype == JSON
        assert orjson.loads(raw) == {"status": "success"}
    else:
        assert ctype == NDJSON
        objects = ndjson(raw)
        assert objects[0] == {"status": "pulling manifest"}
        assert objects[-1] == {"status": "success"}
    assert upstream_count() == before


# -- OpenAI passthrough ------------------------------------------------------------------


def sse_events(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\n\n")
    blocks = raw[:-2].split(b"\n\n")
    assert all(b.startswith(b"data: ") for b in blocks), raw
    return [b[6:] for b in blocks]


@pytest.mark.parametrize("spelling", ["tiny", "TINY", "tiny:latest"])
async def test_openai_chat_stream_renames_the_model_in_every_event(client: TestClient, fake: FakeVLLM, spelling: str) -> None:
    body = {"model": spelling, "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    async with client.post(CHAT, json=body) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        raw = await r.read()
    events = sse_events(raw)
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert all(c["model"] == spelling for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Hello, world!"
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    assert fake.last(CHAT)["model"] == "tiny"


@pytest.mark.parametrize("spelling", ["tiny", "TINY", "library/tiny"])
async def test_openai_chat_non_stream_renames_the_model(client: TestClient, fake: FakeVLLM, spelling: str) -> None:
    async with client.post(CHAT, json={"model": spelling, "messages": USER}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/json")
        reply = await r.json()
    assert reply["model"] == spelling
    assert reply["object"] == "chat.completion"
    assert reply["choices"][0]["message"]["content"] == "Hello, world!"
    assert fake.last(CHAT)["model"] == "tiny"
    assert fake.last(CHAT)["messages"] == USER


@pytest.mark.parametrize("stream", [pytest.param(True, id="stream"), pytest.param(False, id="no-stream")])
async def test_openai_completions_passthrough(client: TestClient, fake: FakeVLLM, stream: bool) -> None:
    async with client.post(COMPLETIONS, json={"model": "Tiny", "prompt": "hi", "stream": stream, "max_tokens": 3}) as r:
        assert r.status == 200
        raw = await r.read()
    if stream:
        events = sse_events(raw)
        assert events[-1] == b"[DONE]"
        chunks = [orjson.loads(e) for e in events[:-1]]
        assert all(c["model"] == "Tiny" for c in chunks)
        assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "Hello, world"
    else:
        reply = orjson.loads(raw)
        assert reply["model"] == "Tiny"
        assert reply["choices"][0]["text"] == "Hello, world"
    assert fake.last(COMPLETIONS)["model"] == "tiny"
    assert fake.last(COMPLETIONS)["max_tokens"] == 3


async def test_openai_embeddings_passthrough(client: TestClient, fake: FakeVLLM) -> None:
    async with client.post("/v1/embeddings", json={"model": "MiniLM", "input": ["a", "b"]}) as r:
        assert r.status == 200
        reply = await r.json()
    assert reply["model"] == "MiniLM"
    assert [d["embedding"] for d in reply["data"]] == [fake_vector("a"), fake_vector("b")]  # OpenAI: as vLLM sent them
    assert fake.last("/v1/embeddings")["model"] == "minilm"


async def test_openai_models_lists_served_models(client: TestClient) -> None:
    async with client.get("/v1/models") as r:
        assert r.status == 200
        reply = await r.json()
    assert reply["object"] == "list"
    assert {m["id"] for m in reply["data"]} == {"tiny:latest", "minilm:latest", "llava:latest"}
    for m in reply["data"]:
        assert m["object"] == "model" and type(m["created"]) is int and m["owned_by"]


@pytest.mark.parametrize("name", ["tiny", "tiny:latest", "library/tiny:latest"])
async def test_openai_model_by_name(client: TestClient, name: str) -> None:
    async with client.get(f"/v1/models/{name}") as r:
        assert r.status == 200
        reply = await r.json()
    assert reply["id"] == "tiny:latest"
    assert reply["object"] == "model"


def assert_openai_error(reply: Any, kind: str) -> None:
    error = reply["error"]
    assert isinstance(error, dict)
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == kind
    assert "param" in error and "code" in error


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("GET", "/v1/models/nope", None, id="model"),
        pytest.param("GET", "/v1/models/tiny:8b", None, id="model-other-tag"),
        pytest.param("POST", CHAT, {"model": "nope", "messages": USER}, id="chat"),
        pytest.param("POST", CHAT, {"model": "nope", "messages": USER, "stream": True}, id="chat-stream"),
        pytest.param("POST", COMPLETIONS, {"model": "nope", "prompt": "x"}, id="completions"),
        pytest.param("POST", "/v1/embeddings", {"model": "nope", "input": "x"}, id="embeddings"),
    ],
)
async def test_openai_unknown_model_is_404_in_openais_envelope(
    client: TestClient, upstream_count: Any, method: str, path: str, body: Any
) -> None:
    before = upstream_count()
    async with client.request(method, path, json=body) as r:
        assert r.status == 404
        assert r.headers["Content-Type"].startswith("application/json")
        reply = await r.json()
    assert_openai_error(reply, "not_found_error")
    assert "nope" in reply["error"]["message"] or "tiny:8b" in reply["error"]["message"]
    assert upstream_count() == before


@pytest.mark.parametrize(
    "raw_body",
    [pytest.param(b"", id="empty"), pytest.param(b"{", id="malformed"), pytest.param(b'{"messages": []}', id="no-model")],
)
async def test_openai_bad_request_is_400_in_openais_envelope(client: TestClient, raw_body: bytes) -> None:
    async with client.post(CHAT, data=raw_body) as r:
        assert r.status == 400
        assert_openai_error(await r.json(), "invalid_request_error")


async def test_openai_backend_error_keeps_vllms_status(client: TestClient, fake: FakeVLLM) -> None:
    fake.fail_next = (400, "max_tokens must be at least 1, got -3.")
    async with client.post(CHAT, json={"model": "tiny", "messages": USER, "max_tokens": -3}) as r:
        assert r.status == 400
        reply = await r.json()
    assert_openai_error(reply, "invalid_request_error")
    assert reply["error"]["message"] == "max_tokens must be at least 1, got -3."


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/api/chat", {"model": "tiny", "messages": USER}, id="chat"),
        pytest.param("/api/generate", {"model": "tiny", "prompt": "hi"}, id="generate"),
        pytest.param(CHAT, {"model": "tiny", "messages": USER, "stream": True}, id="openai"),
    ],
)
async def test_streams_are_delivered_token_by_token(client: TestClient, fake: FakeVLLM, path: str, body: dict[str, Any]) -> None:
    fake.token_delay = 0.15  # 6 events: the whole reply takes ~0.9 s
    started = time.monotonic()
    async with client.post(path, json=body) as r:
        assert r.status == 200
        first = await r.content.readline()
        first_at = time.monotonic() - started
        rest = await r.read()
    total = time.monotonic() - started
    assert b"Hello" in first or b"Hello" in rest.split(b"\n\n")[0]
    assert first_at < 0.5 < total, (first_at, total)


# -- replies with thinking, tool calls, non-ASCII ----------------------------------------


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
@pytest.mark.parametrize("stream", [pytest.param(True, id="stream"), pytest.param(False, id="no-stream")])
@pytest.mark.parametrize(
    ("path", "extra", "thinking_of", "text_of"),
    [
        pytest.param("/api/chat", {"messages": USER}, lambda o: o["message"].get("thinking", ""),
                     lambda o: o["message"]["content"], id="chat"),
        pytest.param("/api/generate", {"prompt": "hi"}, lambda o: o.get("thinking", ""), lambda o: o["response"],
                     id="generate"),
    ],
)  # fmt: skip
async def test_reasoning_becomes_thinking(
    client: TestClient, fake: FakeVLLM, field: str, stream: bool, path: str, extra: dict[str, Any],
    thinking_of: Any, text_of: Any,
) -> None:  # fmt: skip
    fake.reply.reasoning = ["Let me", " think."]
    fake.reply.reasoning_field = field
    status, _, raw = await post(client, path, {"model": "tiny", "stream": stream, "think": True, **extra})
    assert status == 200, raw
    objects = ndjson(raw) if stream else [orjson.loads(raw)]
    assert "".join(thinking_of(o) for o in objects) == "Let me think."
    assert "".join(text_of(o) for o in objects) == "Hello, world!"
    assert_final(objects[-1], usage_of(fake))
    assert fake.last(CHAT)["chat_template_kwargs"] == {"enable_thinking": True}


@pytest.mark.parametrize(
    ("think", "expected"),
    [
        pytest.param(True, {"chat_template_kwargs": {"enable_thinking": True}}, id="true"),
        pytest.param(False, {"chat_template_kwargs": {"enable_thinking": False}}, id="false"),
        pytest.param("high", {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": "high"}, id="high"),
        pytest.param(None, {}, id="absent"),
    ],
)
async def test_think_is_sent_as_vllm_switches(client: TestClient, fake: FakeVLLM, think: Any, expected: dict[str, Any]) -> None:
    body: dict[str, Any] = {"model": "tiny", "messages": USER, "stream": False}
    if think is not None:
        body["think"] = think
    status, _, _ = await post(client, "/api/chat", body)
    assert status == 200
    sent = fake.last(CHAT)
    assert {k: sent[k] for k in ("chat_template_kwargs", "reasoning_effort") if k in sent} == expected


TOOL_CALLS = [{"name": "get_weather", "arguments": '{"city": "Tokyo", "unit": "celsius"}'},
              {"name": "get_time", "arguments": '{"zone": "JST"}'}]  # fmt: skip
TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {}}}}
         for n in ("get_weather", "get_time")]  # fmt: skip


@pytest.mark.parametrize("stream", [pytest.param(True, id="stream"), pytest.param(False, id="no-stream")])
async def test_tool_calls_arrive_whole_once_with_object_arguments(client: TestClient, fake: FakeVLLM, stream: bool) -> None:
    fake.reply.tokens = []
    fake.reply.tool_calls = TOOL_CALLS
    status, _, raw = await post(client, "/api/chat", {"model": "tiny", "messages": USER, "tools": TOOLS, "stream": stream})
    assert status == 200, raw
    objects = ndjson(raw) if stream else [orjson.loads(raw)]
    calls = [c for o in objects for c in o["message"].get("tool_calls", [])]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert [c["function"]["arguments"] for c in calls] == [{"city": "Tokyo", "unit": "celsius"}, {"zone": "JST"}]
    assert objects[-1]["done_reason"] == "stop"  # Ollama has no "tool_calls" reason
    assert all(o["message"]["role"] == "assistant" and o["message"]["content"] == "" for o in objects)


async def test_tool_call_history_reaches_vllm_with_matching_ids(client: TestClient, fake: FakeVLLM) -> None:
    # as ollama-python sends it back: no ids, arguments as objects, results by position
    messages = [
        {"role": "user", "content": "weather and time in Tokyo?"},
        {"role": "assistant", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}},
            {"function": {"name": "get_time", "arguments": {"zone": "JST"}}},
        ]},
        {"role": "tool", "content": "20C", "tool_name": "get_weather"},
        {"role": "tool", "content": "12:00", "tool_name": "get_time"},
    ]  # fmt: skip
    status, _, raw = await post(client, "/api/chat", {"model": "tiny", "messages": messages, "tools": TOOLS, "stream": False})
    assert status == 200, raw
    sent = fake.last(CHAT)["messages"]
    calls = sent[1]["tool_calls"]
    assert [orjson.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Tokyo"}, {"zone": "JST"}]
    assert sent[1]["content"] == ""
    assert [m["tool_call_id"] for m in sent[2:]] == [c["id"] for c in calls]
    assert len({c["id"] for c in calls}) == 2


async def test_non_ascii_text_survives_as_utf8(client: TestClient, fake: FakeVLLM) -> None:
    fake.reply.tokens = ["こんにちは", "、", "世界", " 🌍", ' é"\\\n']
    status, _, raw = await post(client, "/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "日本語 ✓"}]})
    assert status == 200
    objects = ndjson(raw)
    assert "".join(o["message"]["content"] for o in objects) == 'こんにちは、世界 🌍 é"\\\n'
    assert fake.last(CHAT)["messages"][0]["content"] == "日本語 ✓"


PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


@pytest.mark.parametrize(
    ("path", "extra", "index"),
    [
        pytest.param("/api/chat", {"messages": [{"role": "user", "content": "what is this?", "images": [PNG]}]}, 0, id="chat"),
        pytest.param("/api/generate", {"prompt": "what is this?", "images": [PNG]}, 0, id="generate"),
    ],
)
async def test_images_become_data_url_content_parts(
    client: TestClient, fake: FakeVLLM, path: str, extra: dict[str, Any], index: int
) -> None:
    status, _, raw = await post(client, path, {"model": "llava", "stream": False, **extra})
    assert status == 200, raw
    content = fake.last(CHAT)["messages"][index]["content"]
    assert content == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]


async def test_invalid_image_is_400(client: TestClient, upstream_count: Any) -> None:
    before = upstream_count()
    body = {"model": "llava", "messages": [{"role": "user", "content": "x", "images": ["not base64!"]}]}
    status, ctype, raw = await post(client, "/api/chat", body)
    assert (status, ctype) == (400, JSON)
    assert orjson.loads(raw)["error"]
    assert upstream_count() == before


@pytest.mark.parametrize(
    ("body", "error"),
    [
        pytest.param({"model": "tiny", "messages": [{"role": "user", "content": "x", "images": [PNG]}]},
                     "registry.ollama.ai/library/tiny:latest does not support vision", id="chat-images"),
        pytest.param({"model": "tiny", "prompt": "x", "images": [PNG]},
                     "registry.ollama.ai/library/tiny:latest does not support vision", id="generate-images"),
        pytest.param({"model": "llava", "messages": USER, "tools": TOOLS},
                     "registry.ollama.ai/library/llava:latest does not support tools: start its vLLM backend fake with "
                     "--enable-auto-tool-choice --tool-call-parser <parser>, or set drop_unsupported_tools: true there "
                     "to answer such chats without the tools", id="tools"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("stream", [pytest.param(True, id="stream"), pytest.param(False, id="no-stream")])
async def test_missing_capability_is_400_with_the_full_name(
    client: TestClient, upstream_count: Any, body: dict[str, Any], error: str, stream: bool
) -> None:
    before = upstream_count()
    path = "/api/chat" if "messages" in body else "/api/generate"
    status, ctype, raw = await post(client, path, {**body, "stream": stream})
    assert (status, ctype) == (400, JSON)
    assert orjson.loads(raw) == {"error": error}
    assert upstream_count() == before


async def test_suffix_on_a_model_without_insert_is_400(client: TestClient) -> None:
    status, _, raw = await post(client, "/api/generate", {"model": "tiny", "prompt": "def f(", "suffix": "return 1"})
    assert status == 400
    assert orjson.loads(raw) == {"error": "registry.ollama.ai/library/tiny:latest does not support insert"}


@pytest.mark.parametrize("keep_alive", [0, "0", "10m", -1])
async def test_keep_alive_on_a_real_request_still_generates(client: TestClient, fake: FakeVLLM, keep_alive: Any) -> None:
    body = {"model": "tiny", "messages": USER, "keep_alive": keep_alive, "stream": False}
    status, _, raw = await post(client, "/api/chat", body)
    assert status == 200
    reply = orjson.loads(raw)
    assert reply["done_reason"] == "stop" and reply["message"]["content"] == "Hello, world!"
    assert "keep_alive" not in fake.last(CHAT)


async def test_large_body_is_accepted(client: TestClient, fake: FakeVLLM) -> None:
    prompt = "word " * 600_000  # 3 MB, over aiohttp's 1 MiB default
    body = io.BytesIO(orjson.dumps({"model": "tiny", "prompt": prompt, "stream": False}))
    status, _, raw = await post(client, "/api/generate", body)
    assert status == 200, raw[:200]
    assert fake.last(CHAT)["messages"][-1]["content"] == prompt


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/api/chat", {"model": "tiny", "messages": USER}, id="chat"),
        pytest.param("/api/embed", {"model": "minilm", "input": "x"}, id="embed"),
        pytest.param(CHAT, {"model": "tiny", "messages": USER}, id="openai"),
    ],
)
async def test_backend_gets_its_api_key_json_and_the_request_id(
    start_proxy: Any, session: Any, path: str, body: dict[str, Any]
) -> None:
    backend = HeaderRecordingVLLM({"tiny": Model(), "minilm": Model(kind="embedding")})
    await backend.start()
    try:
        url = await start_proxy(backends=[{"url": backend.url, "name": "gpu", "api_key": "backend-secret"}])
        backend.headers.clear()
        headers = {"Authorization": "Bearer client-token", "X-Request-Id": "req-42"}
        async with session.post(url + path, data=orjson.dumps(body), headers=headers) as r:
            await r.read()
        (sent,) = backend.headers
        assert sent["Authorization"] == "Bearer backend-secret"  # never the client's token
        assert sent["Content-Type"] == "application/json"  # vLLM refuses anything else
        assert sent["X-Request-Id"] == "req-42"
    finally:
        await backend.stop()


async def test_client_authorization_header_is_tolerated(client: TestClient) -> None:
    for value in ("Bearer ", "Bearer sk-anything"):
        status, _, _ = await post(client, "/api/chat", {"model": "tiny", "messages": USER, "stream": False},
                                  headers={"Authorization": value})  # fmt: skip
        assert status == 200


# -- configured aliases and several backends ------------------------------------------------


async def test_alias_applies_its_default_options_under_the_requests(start_proxy: Any, fake: FakeVLLM, session: Any) -> None:
    url = await start_proxy(
        backends=[{"url": fake.url, "name": "fake"}],
        models=[{"name": "fast:1b", "backend": "fake", "served": "tiny", "family": "llama", "parameter_size": "1B",
                 "options": {"temperature": 0.1, "num_predict": 2}}],
    )  # fmt: skip
    body = {"model": "FAST:1b", "messages": USER, "stream": False, "options": {"temperature": 0.7}}
    async with session.post(url + "/api/chat", data=orjson.dumps(body)) as r:
        assert r.status == 200
        reply = await r.json()
    assert reply["model"] == "FAST:1b"
    sent = fake.last(CHAT)
    assert (sent["model"], sent["temperature"], sent["max_tokens"]) == ("tiny", 0.7, 2)
    async with session.get(url + "/api/tags") as r:
        tags = {m["name"]: m for m in (await r.json())["models"]}
    assert {"fast:1b", "tiny:latest", "minilm:latest"} <= set(tags)
    assert tags["fast:1b"]["details"]["family"] == "llama"
    assert tags["fast:1b"]["details"]["parameter_size"] == "1B"
    async with session.post(url + "/api/show", json={"model": "fast:1b"}) as r:
        show = await r.json()
    assert "temperature" in show["parameters"] and "num_predict" in show["parameters"]
    assert show["model_info"]["llama.context_length"] == 2048
    async with session.post(url + "/api/chat", json={"model": "fast", "messages": USER}) as r:
        assert r.status == 404  # fast:latest is another model than fast:1b


async def test_requests_go_to_the_backend_that_serves_the_model(start_proxy: Any, session: Any) -> None:
    one, two = FakeVLLM({"tiny": Model()}), FakeVLLM({"Qwen/Qwen3-8B": Model(max_model_len=4096)})
    await one.start()
    await two.start()
    try:
        url = await start_proxy(backends=[{"url": one.url, "name": "one"}, {"url": two.url, "name": "two"}])
        probes = len(one.requests), len(two.requests)
        async with session.get(url + "/api/tags") as r:
            names = {m["name"] for m in (await r.json())["models"]}
        assert names == {"tiny:latest", "qwen/qwen3-8b:latest"}
        for spelling in ("Qwen/Qwen3-8B", "qwen/qwen3-8b:latest"):
            async with session.post(url + "/api/chat", json={"model": spelling, "messages": USER}) as r:
                assert r.status == 200
                objects = ndjson(await r.read())
            assert {o["model"] for o in objects} == {spelling}
            assert two.last(CHAT)["model"] == "Qwen/Qwen3-8B"
            assert two.last(CHAT)["messages"] == USER
        async with session.get(url + "/v1/models/Qwen/Qwen3-8B") as r:
            assert r.status == 200
            assert (await r.json())["id"] == "qwen/qwen3-8b:latest"
        async with session.post(url + "/api/show", json={"model": "Qwen/Qwen3-8B"}) as r:
            info = (await r.json())["model_info"]
        assert info["general.architecture"] == "qwen3"
        assert info["qwen3.context_length"] == 4096
        async with session.post(url + "/api/chat", json={"model": "tiny", "messages": USER, "stream": False}) as r:
            assert r.status == 200
        assert one.last(CHAT)["messages"] == USER
        assert (len(one.requests) - probes[0], len(two.requests) - probes[1]) == (1, 2)
    finally:
        await one.stop()
        await two.stop()


async def test_a_model_the_backend_stopped_serving_is_404_after_a_refresh(start_proxy: Any, fake: FakeVLLM, session: Any) -> None:
    url = await start_proxy(backends=[{"url": fake.url, "name": "fake"}], refresh_interval=0.1)
    del fake.models["tiny"]
    await asyncio.sleep(0.3)
    async with session.post(url + "/api/chat", json={"model": "tiny", "messages": USER}) as r:
        assert r.status == 404
        assert await r.json() == {"error": "model 'tiny' not found"}
    async with session.get(url + "/api/tags") as r:
        assert "tiny:latest" not in {m["name"] for m in (await r.json())["models"]}


async def test_a_model_started_after_the_proxy_is_found(start_proxy: Any, fake: FakeVLLM, session: Any) -> None:
    clock = FakeTimers()
    url = await start_proxy(backends=[{"url": fake.url, "name": "fake"}], timers=clock.timers())
    fake.models["late"] = Model()
    chat = {"model": "late", "messages": USER, "stream": False}
    async with session.post(url + "/api/chat", json=chat) as r:
        assert r.status == 404  # the listing is less than a second old: no second look yet
    await clock.advance(1.05)  # the proxy looks again for an unknown name at most once a second
    async with session.post(url + "/api/chat", json=chat) as r:
        assert r.status == 200, await r.text()
    assert fake.last(CHAT)["model"] == "late"


# -- CORS (gin-contrib/cors with Ollama's default OLLAMA_ORIGINS, Ollama's server/routes.go) -----

ALLOWED_ORIGINS = [
    pytest.param("http://localhost", id="localhost"),
    pytest.param("http://localhost:3000", id="localhost-port"),
    pytest.param("https://127.0.0.1:8443", id="loopback-https"),
    pytest.param("http://0.0.0.0:8080", id="unspecified"),
    pytest.param("app://obsidian.md", id="app"),
    pytest.param("vscode-webview://1a2b3c", id="vscode-webview"),
    pytest.param("tauri://localhost", id="tauri"),
]


@pytest.mark.parametrize("origin", ALLOWED_ORIGINS)
async def test_cors_preflight_from_a_local_origin_is_allowed(client: TestClient, origin: str) -> None:
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "content-type,authorization"}  # fmt: skip
    async with client.options("/api/chat", headers=headers) as r:
        assert r.status == 204
        assert r.headers.get("Access-Control-Allow-Origin") == origin
        assert "POST" in r.headers.get("Access-Control-Allow-Methods", "")
        allowed = {h.strip().lower() for h in r.headers.get("Access-Control-Allow-Headers", "").split(",")}
        assert {"content-type", "authorization"} <= allowed


@pytest.mark.parametrize("origin", ALLOWED_ORIGINS[:3])
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("POST", "/api/chat", {"model": "tiny", "messages": USER}, id="chat-stream"),
        pytest.param("GET", "/api/tags", None, id="tags"),
        pytest.param("POST", "/api/chat", {"model": "nope", "messages": USER}, id="error"),
    ],
)
async def test_cors_response_names_a_local_origin(client: TestClient, origin: str, method: str, path: str, body: Any) -> None:
    async with client.request(method, path, json=body, headers={"Origin": origin}) as r:
        assert r.headers.get("Access-Control-Allow-Origin") == origin
        await r.read()


@pytest.mark.parametrize("origin", ["http://evil.example.com", "https://localhost.evil.com", "null"])
async def test_cors_foreign_origin_is_refused(client: TestClient, origin: str) -> None:
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    async with client.options("/api/chat", headers=headers) as r:
        assert r.status == 403
        assert "Access-Control-Allow-Origin" not in r.headers
    async with client.post("/api/chat", json={"model": "tiny", "messages": USER}, headers={"Origin": origin}) as r:
        assert r.status == 403
        assert "Access-Control-Allow-Origin" not in r.headers


async def test_requests_without_origin_are_unaffected_by_cors(client: TestClient) -> None:
    async with client.post("/api/chat", json={"model": "tiny", "messages": USER, "stream": False}) as r:
        assert r.status == 200
        assert "Access-Control-Allow-Origin" not in r.headers
