"""``/api/generate`` ↔ ``/v1/chat/completions`` (templated) or ``/v1/completions`` (raw)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.errors import BadRequest
from proxy.translate.chat import to_openai_messages
from proxy.translate.request import Translated, response_format, sampling, stream_fields, think_fields
from proxy.translate.stream import StreamTranslator

_HANDLED = {"model", "prompt", "system", "images", "format", "options", "stream", "keep_alive",
            "think", "raw", "suffix", "template", "context"}  # fmt: skip


def to_openai_generate_request(
    request: Mapping[str, Any], served: str, defaults: Mapping[str, Any], max_model_len: int | None
) -> tuple[str, Translated]:
    """The vLLM path (``/v1/chat/completions`` or ``/v1/completions``) and its body."""
    prompt = request.get("prompt") or ""
    if not isinstance(prompt, str):
        raise BadRequest("json: cannot unmarshal into Go struct field GenerateRequest.prompt of type string")
    if request.get("template"):
        # Ollama's Go templates cannot be rendered by vLLM, and silently using the
        # model's own template would change the output without telling the client.
        raise BadRequest("template overrides are not supported: vLLM renders the model's own chat template")
    if request.get("context"):
        raise BadRequest("context is not supported yet: resend the conversation as messages via /api/chat")
    params, dropped = sampling(request.get("options"), defaults)
    dropped += [f for f in request if f not in _HANDLED]
    if request.get("raw"):
        if request.get("system"):
            raise BadRequest("raw mode does not support template, system, or context")
        body: dict[str, Any] = {"model": served, "prompt": prompt, **params, **stream_fields()}
        # /v1/completions defaults max_tokens to 16 (vllm-api.md §9); Ollama's default
        # is unlimited, so ask for the whole context (vLLM 0.32+ clamps it to what fits).
        body.setdefault("max_tokens", max_model_len or 4096)
        fmt = response_format(request.get("format"))
        if fmt:
            body["response_format"] = fmt
        return "/v1/completions", Translated(body, dropped)
    messages: list[dict[str, Any]] = []
    if request.get("system"):
        messages.append({"role": "system", "content": request["system"]})
    messages.append({"role": "user", "content": prompt, "images": request.get("images") or []})
    body = {"model": served, "messages": to_openai_messages(messages), **params, **stream_fields()}
    fmt = response_format(request.get("format"))
    if fmt:
        body["response_format"] = fmt
    body.update(think_fields(request.get("think")))
    return "/v1/chat/completions", Translated(body, dropped)


class GenerateStreamTranslator(StreamTranslator):
    def chunk(self, created_at: str, text: str, thinking: str) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "created_at": created_at, "response": text, "done": False}
        if thinking:
            out["thinking"] = thinking
        return out

    def final(self, created_at: str, tool_calls: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "created_at": created_at, "response": "", "done": True}
        if tool_calls:
            out["tool_calls"] = tool_calls
        return out
