"""A fake vLLM OpenAI server that speaks vLLM's wire format faithfully and records what it
received: SSE ``data:`` framing, the role-only first chunk, a ``finish_reason`` chunk, the
usage chunk with ``choices: []``, ``[DONE]``, nested (0.10+) or flat (<= 0.9) error
bodies, mid-stream error events, and vLLM's validation of ``tools: []``. The shapes follow
the vLLM 0.32.0 captures in tests/golden/captures and vLLM 0.32's vllm/entrypoints/openai/protocol.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Reply:
    """What the fake generates: tokens, then tool calls, then the finish reason."""

    tokens: list[str] = field(default_factory=lambda: ["Hello", ",", " world", "!"])
    reasoning: list[str] = field(default_factory=list)
    reasoning_field: str = "reasoning"  # vLLM 0.12+; "reasoning_content" before
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # {"name", "arguments": str}
    argument_piece: int = 3  # tool-call arguments are streamed in pieces of this many chars
    finish: str = "stop"


@dataclass
class Model:
    kind: str = "chat"  # "chat" or "embedding"
    max_model_len: int = 2048
    root: str = ""
    tools: bool = True  # started with --enable-auto-tool-choice --tool-call-parser
    vision: bool = False  # a multimodal model


class FakeVLLM:
    def __init__(self, models: dict[str, Model] | None = None, error_shape: str = "nested") -> None:
        self.models = models or {"tiny": Model()}
        self.error_shape = error_shape
        self.reply = Reply()
        self.requests: list[tuple[str, dict[str, Any]]] = []
        # (status, message) for the next request, and an error event after the first token;
        # "{authorization}" in a message is the request's Authorization header (an echoing backend).
        self.fail_next: tuple[int, str] | None = None
        self.midstream_error: str | None = None
        self.token_ids = True  # honour return_token_ids (False: an older vLLM, or a router that drops them)
        self.stall = False  # stop after the role chunk and wait for the client to leave
        self.token_delay = 0.0
        self.first_token_delay = 0.0  # prefill: seconds before the first token of a running request
        self.serve_metrics = True  # False: GET /metrics is a 404 (the proxy routes on its own counts)
        self.head_delay = 0.0  # seconds before a generation's response head (the proxy's latency figure)
        self.max_num_seqs = 0  # like vLLM's --max-num-seqs: streams generating at once, the rest wait FCFS; 0 = no limit
        self.dev_mode = False  # VLLM_SERVER_DEV_MODE=1: GET /server_info answers (with max_num_seqs)
        self.server_info_calls = 0
        self._running: asyncio.Semaphore | None = None
        self.aborted = 0  # streams whose client went away before the end
        self.active = 0  # streams in progress
        self.peak_active = 0
        self.stall_started = asyncio.Event()
        self.sleeping = False
        self.sleep_calls: list[str] = []  # "sleep?level=N" / "wake_up", in order
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self, port: int = 0, ssl_context: Any = None) -> str:
        app = web.Application(client_max_size=256 * 1024 * 1024)  # vLLM takes long prompts
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/version", self._version)
        app.router.add_get("/health", self._health)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/tokenize", self._tokenize)
        # Sleep mode (--enable-sleep-mode + VLLM_SERVER_DEV_MODE=1; vLLM's docs, features/sleep_mode).
        app.router.add_post("/sleep", self._sleep)
        app.router.add_post("/wake_up", self._wake_up)
        app.router.add_get("/is_sleeping", self._is_sleeping)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/server_info", self._server_info)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, ssl_context=ssl_context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    def last(self, path: str) -> dict[str, Any]:
        return next(body for p, body in reversed(self.requests) if p == path)

    # -- errors -----------------------------------------------------------------------

    def error(self, status: int, message: str, kind: str = "BadRequestError", param: str | None = None) -> web.Response:
        if self.error_shape == "flat":
            body: dict[str, Any] = {"object": "error", "message": message, "type": kind, "param": param, "code": status}
        else:
            body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
        return web.json_response(body, status=status)

    async def _parse(self, request: web.Request, kind: str) -> tuple[dict[str, Any] | None, web.Response | None]:
        if request.content_type != "application/json":
            return None, self.error(400, "Unsupported Media Type: Only 'application/json' is allowed")
        body = await request.json()
        self.requests.append((request.path, body))
        invalid = _invalid_field(body)
        if invalid:
            return None, self.error(400, invalid)
        if self.fail_next:
            status, message = self.fail_next
            message = _echo(message, request)
            self.fail_next = None
            return None, self.error(status, message, "InternalServerError" if status >= 500 else "BadRequestError")
        model = body.get("model")
        if model not in self.models:
            return None, self.error(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
        if self.models[model].kind != kind:
            return None, web.json_response({"detail": "Not Found"}, status=404)
        if body.get("stream_options") and not body.get("stream"):
            return None, self.error(400, "Stream options can only be defined when `stream=True`.")
        return body, None

    # -- routes -----------------------------------------------------------------------

    async def _version(self, _: web.Request) -> web.Response:
        return web.json_response({"version": "0.32.0"})

    async def _health(self, _: web.Request) -> web.Response:
        return web.Response()

    async def _models(self, _: web.Request) -> web.Response:
        data: list[dict[str, Any]] = [
            {"id": name, "object": "model", "created": 1700000000, "owned_by": "vllm", "root": m.root or f"/models/{name}",
             "parent": None, "max_model_len": m.max_model_len, "permission": []}
            for name, m in self.models.items()
        ]  # fmt: skip
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, err = await self._parse(request, "chat")
        if err:
            return err
        assert body is not None
        if "tools" in body and body["tools"] == []:
            return self.error(
                400,
                "`tools` must not be an empty array. Either provide at least one tool or omit the field entirely.",
            )
        if not isinstance(body.get("messages"), list):  # vLLM's request validation (pydantic): a 400, not a crash
            return self.error(400, "messages: Input should be a valid list")
        model = self.models[body["model"]]
        if body.get("tools") and not model.tools:
            return self.error(400, '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set')
        if not model.vision and any(
            isinstance(m.get("content"), list) and any(p.get("type") == "image_url" for p in m["content"])
            for m in body.get("messages", [])
        ):
            return self.error(400, f"{body['model']} is not a multimodal model")
        return await self._generate(request, body, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body, err = await self._parse(request, "chat")
        if err:
            return err
        assert body is not None
        return await self._generate(request, body, chat=False)

    async def _embeddings(self, request: web.Request) -> web.Response:
        body, err = await self._parse(request, "embedding")
        if err:
            return err
        assert body is not None
        if "input" not in body:
            return self.error(400, "[{'type': 'missing', 'loc': ('body', 'input'), 'msg': 'Field required'}]")
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"index": i, "object": "embedding", "embedding": fake_vector(text)} for i, text in enumerate(inputs)]
        tokens = sum(len(t.split()) + 2 for t in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}
        return web.json_response({"id": "embd-1", "object": "list", "created": 1, "model": body["model"], "data": data,
                                  "usage": usage})  # fmt: skip

    async def _sleep(self, request: web.Request) -> web.Response:
        self.sleeping = True
        self.sleep_calls.append(f"sleep?level={request.query.get('level', '1')}")
        return web.json_response({"status": "sleeping", "level": int(request.query.get("level", "1"))})

    async def _wake_up(self, _: web.Request) -> web.Response:
        self.sleeping = False
        self.sleep_calls.append("wake_up")
        return web.json_response({"status": "awake"})

    async def _is_sleeping(self, _: web.Request) -> web.Response:
        return web.json_response({"is_sleeping": self.sleeping})

    async def _server_info(self, request: web.Request) -> web.Response:
        """vLLM's dev-mode config dump (vllm/entrypoints/serve/dev/server_info/api_router.py),
        cut down to what the proxy reads; 404 without dev mode, as the route is not mounted."""
        self.server_info_calls += 1
        if not self.dev_mode:
            return web.json_response({"detail": "Not Found"}, status=404)
        if request.query.get("config_format") != "json":
            return web.json_response({"vllm_config": "model='tiny', ...", "vllm_env": {}, "system_env": {}})
        config = {"scheduler_config": {"max_num_seqs": self.max_num_seqs or 256, "max_num_batched_tokens": 2048}}
        return web.json_response({"vllm_config": config, "vllm_env": {}, "system_env": {}})

    async def _metrics(self, _: web.Request) -> web.Response:
        if not self.serve_metrics:
            raise web.HTTPNotFound()
        text = f'vllm:num_requests_running{{engine="0",model_name="tiny"}} {float(self.active)}\n'
        text += 'vllm:num_requests_waiting{engine="0",model_name="tiny"} 0.0\n'
        return web.Response(text=text)

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((request.path, body))
        if body.get("model") not in self.models:
            return self.error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError", "model")
        ids = token_ids(_prompt_text(body)) + ([9] if body.get("add_generation_prompt") else [])
        return web.json_response({"count": len(ids), "max_model_len": self.models[body["model"]].max_model_len,
                                  "tokens": ids, "token_strs": None})  # fmt: skip

    async def _generate(self, request: web.Request, body: dict[str, Any], chat: bool) -> web.StreamResponse:
        for _ in range(500):  # a sleeping vLLM holds new requests until /wake_up (bounded: 5 s)
            if not self.sleeping:
                break
            await asyncio.sleep(0.01)
        else:
            return self.error(503, "held while sleeping: nobody called /wake_up", "ServiceUnavailableError")
        if self.head_delay:
            await asyncio.sleep(self.head_delay)
        reply = self.reply
        limit = body.get("max_tokens")
        if not chat and limit is None:
            limit = 16  # /v1/completions' OpenAI-legacy default
        tokens = reply.tokens if limit is None else reply.tokens[:limit]
        finish = "length" if limit is not None and limit < len(reply.tokens) else reply.finish
        if reply.tool_calls and finish == "stop" and chat:
            finish = "tool_calls"
        prompt_tokens = _count_prompt(body)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(tokens) + len(reply.reasoning),
                 "total_tokens": prompt_tokens + len(tokens) + len(reply.reasoning)}  # fmt: skip
        if not body.get("stream"):
            return web.json_response(self._full(body, chat, tokens, finish, usage))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        if self.max_num_seqs and self._running is None:
            self._running = asyncio.Semaphore(self.max_num_seqs)
        try:
            async with self._running or contextlib.nullcontext():
                await self._stream(request, response, body, chat, tokens, finish, usage)
        except ConnectionResetError:
            self.aborted += 1  # the proxy closed the stream: vLLM aborts the request
            return response
        except asyncio.CancelledError:
            self.aborted += 1
            raise
        finally:
            self.active -= 1
        await response.write_eof()
        return response

    async def _stream(self, request: web.Request, response: web.StreamResponse, body: dict[str, Any], chat: bool,
                      tokens: list[str], finish: str, usage: dict[str, Any]) -> None:  # fmt: skip
        if self.first_token_delay:
            await asyncio.sleep(self.first_token_delay)
        options = body.get("stream_options") or {}
        continuous = options.get("include_usage") and options.get("continuous_usage_stats")
        for n, event in enumerate(self._events(body, chat, tokens, finish)):
            if continuous:  # vLLM's running counts in every chunk
                done = min(n, usage["completion_tokens"])
                event = {**event, "usage": {**usage, "completion_tokens": done, "total_tokens": usage["prompt_tokens"] + done}}
            if self.stall:
                self.stall_started.set()
                await _wait_for_disconnect(request)
                raise ConnectionResetError
            await response.write(b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n")
            if self.token_delay:
                await asyncio.sleep(self.token_delay)
            if self.midstream_error and event["choices"] and _has_text(event):
                error = {
                    "error": {
                        "message": _echo(self.midstream_error, request),
                        "type": "InternalServerError",
                        "param": None,
                        "code": 500,
                    }
                }
                await response.write(b"data: " + json.dumps(error).encode() + b"\n\ndata: [DONE]\n\n")
                return
        if (body.get("stream_options") or {}).get("include_usage"):
            event = {**_envelope(body, chat), "choices": [], "usage": usage}
            await response.write(b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")

    def _events(self, body: dict[str, Any], chat: bool, tokens: list[str], finish: str) -> list[dict[str, Any]]:
        env = _envelope(body, chat)
        reply = self.reply
        ids = body.get("return_token_ids") and self.token_ids
        want_lp = body.get("logprobs")
        if not chat:
            events = []
            for n, t in enumerate(tokens):
                choice: dict[str, Any] = {"index": 0, "text": t, "logprobs": None, "finish_reason": None}
                if ids:
                    choice["token_ids"] = token_ids(t)
                    if n == 0:
                        choice["prompt_token_ids"] = _prompt_ids(body)
                if want_lp is not None and want_lp is not False:
                    choice["logprobs"] = {"tokens": [t], "token_logprobs": [-0.5], "top_logprobs": [{t: -0.5}],
                                          "text_offset": [0]}  # fmt: skip
                events.append({**env, "choices": [choice]})
            last = {"index": 0, "text": "", "logprobs": None, "finish_reason": finish, "stop_reason": None}
            return [*events, {**env, "choices": [last]}]

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            if finish_reason:
                choice["stop_reason"] = None
            return {**env, "choices": [choice]}

        events = [chunk({"role": "assistant", "content": ""})]
        if ids:
            events[0]["prompt_token_ids"] = _prompt_ids(body)
        events += [chunk({reply.reasoning_field: t}) for t in reply.reasoning]
        for t in tokens:
            event = chunk({"content": t})
            if ids:
                event["choices"][0]["token_ids"] = token_ids(t)
            if want_lp:
                entry = {"token": t, "logprob": -0.5, "bytes": list(t.encode())}
                top = [entry, {"token": "?", "logprob": -0.25, "bytes": [63]}][: body.get("top_logprobs") or 0]
                event["choices"][0]["logprobs"] = {"content": [{**entry, "top_logprobs": top}]}
            events.append(event)
        for index, call in enumerate(reply.tool_calls):
            head = {"index": index, "id": f"chatcmpl-tool-{index}", "type": "function",
                    "function": {"name": call["name"], "arguments": ""}}  # fmt: skip
            events.append(chunk({"tool_calls": [head]}))
            args = call["arguments"]
            for start in range(0, len(args), reply.argument_piece):
                piece = {
                    "index": index,
                    "id": None,
                    "type": None,
                    "function": {"arguments": args[start : start + reply.argument_piece]},
                }
                events.append(chunk({"tool_calls": [piece]}))
        events.append(chunk({}, finish))
        return events

    def _full(self, body: dict[str, Any], chat: bool, tokens: list[str], finish: str, usage: dict[str, Any]) -> dict[str, Any]:
        env = _envelope(body, chat)
        env["object"] = "chat.completion" if chat else "text_completion"
        if not chat:
            choice = {"index": 0, "text": "".join(tokens), "logprobs": None, "finish_reason": finish, "stop_reason": None}
            return {**env, "choices": [choice], "usage": usage}
        message: dict[str, Any] = {"role": "assistant", "content": "".join(tokens), "refusal": None, "tool_calls": []}
        if self.reply.reasoning:
            message[self.reply.reasoning_field] = "".join(self.reply.reasoning)
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish, "stop_reason": None}
        return {**env, "choices": [choice], "usage": usage, "prompt_logprobs": None, "kv_transfer_params": None}


def fake_vector(text: str, dims: int = 8) -> list[float]:
    """A deterministic, deliberately un-normalised vector for ``text``."""
    digest = hashlib.sha256(text.encode()).digest()
    return [(b - 128) / 16.0 for b in digest[:dims]]


def token_ids(text: str) -> list[int]:
    """Deterministic fake token ids: one per whitespace-separated word."""
    return [100 + sum(word.encode()) % 900 for word in text.split()] or [1]


# The request fields the fake reads, typed as vLLM's pydantic request models type them
# (vllm/entrypoints/openai/protocol.py): a wrong type is vLLM's 400 validation error.
_INT, _NUMBER, _BOOL, _LIST, _DICT = "integer", "number", "boolean", "list", "dictionary"
_FIELD_TYPES = {"model": "string", "messages": _LIST, "max_tokens": _INT, "max_completion_tokens": _INT, "n": _INT,
                "seed": _INT, "dimensions": _INT, "temperature": _NUMBER, "top_p": _NUMBER, "stream": _BOOL,
                "echo": _BOOL, "stream_options": _DICT, "tools": _LIST}  # fmt: skip


def _invalid_field(body: Any) -> str | None:
    """Pydantic's validation text for the first field of the wrong type, as vLLM answers it."""
    if not isinstance(body, dict):
        return "[{'type': 'model_attributes_type', 'loc': ('body',), 'msg': 'Input should be a valid dictionary or object'}]"
    for key, kind in _FIELD_TYPES.items():
        value = body.get(key)
        if value is None or _is_a(value, kind):
            continue
        return f"[{{'type': '{kind}_type', 'loc': ('body', '{key}'), 'msg': 'Input should be a valid {kind}'}}]"
    messages = body.get("messages") or []
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        return "[{'type': 'dict_type', 'loc': ('body', 'messages', 0), 'msg': 'Input should be a valid dictionary'}]"
    for key in ("prompt", "input"):  # str | list[str] | list[int] | list[list[int]]
        if key in body and not _is_prompt(body[key]):
            return f"[{{'type': 'string_type', 'loc': ('body', '{key}'), 'msg': 'Input should be a valid string'}}]"
    return None


def _is_prompt(value: Any) -> bool:
    def ids(v: Any) -> bool:
        return isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)

    return isinstance(value, str) or ids(value) or (isinstance(value, list) and all(isinstance(v, str) or ids(v) for v in value))


def _is_a(value: Any, kind: str) -> bool:
    if isinstance(value, bool):
        return kind == _BOOL
    if kind == _INT:
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    types = {"string": str, _NUMBER: int | float, _LIST: list, _DICT: dict}
    return kind in types and isinstance(value, types[kind])


def _echo(message: str, request: web.Request) -> str:
    return message.replace("{authorization}", request.headers.get("Authorization", ""))


def _prompt_text(body: dict[str, Any]) -> str:
    if "messages" in body:
        return " ".join(f"<{m.get('role')}> {m.get('content', '')}" for m in body["messages"])
    return str(body.get("prompt", ""))


def _prompt_ids(body: dict[str, Any]) -> list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        return prompt
    return token_ids(_prompt_text(body)) + ([9] if "messages" in body else [])


def _envelope(body: dict[str, Any], chat: bool) -> dict[str, Any]:
    kind = "chat.completion.chunk" if chat else "text_completion"
    return {"id": "chatcmpl-fake" if chat else "cmpl-fake", "object": kind, "created": 1700000000, "model": body["model"]}


def _count_prompt(body: dict[str, Any]) -> int:
    if isinstance(body.get("prompt"), list):
        return len(body["prompt"])
    if "messages" in body:
        return len(" ".join(str(m.get("content", "")) for m in body["messages"]).split()) + 3
    return len(str(body.get("prompt", "")).split()) + 3


def _has_text(event: dict[str, Any]) -> bool:
    choice = event["choices"][0]
    return bool((choice.get("delta") or {}).get("content") or choice.get("text"))


async def _wait_for_disconnect(request: web.Request) -> None:
    for _ in range(3000):  # bounded: 30 s
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(0.01)
