"""``/api/chat`` ↔ ``/v1/chat/completions``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.errors import BadRequest
from proxy.translate.common import arguments_to_string, image_data_url
from proxy.translate.request import (
    Translated,
    logprob_fields,
    response_format,
    sampling,
    stream_fields,
    think_fields,
    tool_call_id,
)
from proxy.translate.stream import StreamTranslator

_HANDLED = {"model", "messages", "tools", "format", "options", "stream", "keep_alive", "think", "logprobs",
            "top_logprobs"}  # fmt: skip


def to_openai_chat_request(
    request: Mapping[str, Any], served: str, defaults: Mapping[str, Any], max_model_len: int | None = None
) -> Translated:
    params, dropped = sampling(request.get("options"), defaults, max_model_len)
    body: dict[str, Any] = {"model": served, "messages": to_openai_messages(request.get("messages") or [])}
    body.update(params)
    body.update(stream_fields())
    tools = request.get("tools")
    if tools:  # vLLM answers an empty list with 400; ollama-python always sends []
        if not isinstance(tools, list):
            raise BadRequest("json: cannot unmarshal tools into Go struct field ChatRequest.tools of type api.Tools")
        body["tools"] = tools
    fmt = response_format(request.get("format"))
    if fmt:
        body["response_format"] = fmt
    body.update(think_fields(request.get("think")))
    body.update(logprob_fields(request, chat=True))
    dropped += [f for f in request if f not in _HANDLED]
    return Translated(body, dropped)


def to_openai_messages(messages: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    pending_ids: list[str] = []  # ids of the last assistant turn's calls, in order
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest("json: cannot unmarshal into Go struct field ChatRequest.messages of type api.Message")
        role = str(message.get("role") or "").lower()  # Ollama lower-cases roles on input
        content = message.get("content") or ""  # ollama-python drops empty content
        if not isinstance(content, str):
            raise BadRequest("json: cannot unmarshal into Go struct field Message.messages.content of type string")
        converted: dict[str, Any] = {"role": role, "content": content}
        if message.get("images"):
            parts: list[dict[str, Any]] = [{"type": "text", "text": content}] if content else []
            parts += [{"type": "image_url", "image_url": {"url": image_data_url(img)}} for img in message["images"]]
            converted["content"] = parts
        if role == "assistant":
            if message.get("thinking"):
                converted["reasoning"] = message["thinking"]  # vLLM 0.12+ reads `reasoning`
            calls = message.get("tool_calls") or []
            if calls:
                converted["tool_calls"] = [_openai_tool_call(c, i, j) for j, c in enumerate(calls)]
            pending_ids = [c["id"] for c in converted.get("tool_calls", [])]
        elif role == "tool":
            call_id = message.get("tool_call_id") or (pending_ids.pop(0) if pending_ids else None)
            if call_id:
                converted["tool_call_id"] = call_id
            if message.get("tool_name"):
                converted["name"] = message["tool_name"]
        out.append(converted)
    return out


def _openai_tool_call(call: Any, message_index: int, call_index: int) -> dict[str, Any]:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise BadRequest("json: cannot unmarshal into Go struct field Message.messages.tool_calls of type api.ToolCall")
    function = call["function"]
    return {
        "id": call.get("id") or tool_call_id(message_index, call_index),
        "type": "function",
        "function": {"name": function.get("name", ""), "arguments": arguments_to_string(function.get("arguments"))},
    }


class ChatStreamTranslator(StreamTranslator):
    TEXT_LINE = b'{"model":%b,"created_at":%b,"message":{"role":"assistant","content":"%b"},"done":false}\n'

    def chunk(self, created_at: str, text: str, thinking: str) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        return {"model": self.model, "created_at": created_at, "message": message, "done": False}

    def final(self, created_at: str, tool_calls: list[dict[str, Any]]) -> dict[str, Any]:
        # Every tool call arrives whole in the final chunk, as current Ollama's native
        # llama-server path emits them (Ollama's api/types.go).
        message: dict[str, Any] = {"role": "assistant", "content": ""}
        if tool_calls:
            message["tool_calls"] = tool_calls
        return {"model": self.model, "created_at": created_at, "message": message, "done": True}
