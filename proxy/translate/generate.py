"""``/api/generate`` ↔ ``/v1/chat/completions`` (templated) or ``/v1/completions`` (raw)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.errors import BadRequest
from proxy.translate import fim
from proxy.translate.chat import to_openai_messages
from proxy.translate.request import (
    Translated,
    logprob_fields,
    response_format,
    sampling,
    stream_fields,
    think_fields,
)
from proxy.translate.stream import StreamTranslator

_HANDLED = {"model", "prompt", "system", "images", "format", "options", "stream", "keep_alive",
            "think", "raw", "suffix", "template", "context", "logprobs", "top_logprobs"}  # fmt: skip


def to_openai_generate_request(
    request: Mapping[str, Any],
    served: str,
    defaults: Mapping[str, Any],
    max_model_len: int | None,
    context_ids: list[int] | None = None,
    fim_family: str | None = None,
) -> tuple[str, Translated]:
    """The vLLM path and body for a generate request.

    Templated (the usual case): a one-turn chat, ``[system?, user(prompt, images)]``,
    rendered by vLLM with the model's own template, asking for token ids so the reply can
    carry Ollama's ``context``. Raw: ``/v1/completions`` with the prompt as given. With
    ``context``: ``/v1/completions`` with the earlier ids followed by ``context_ids``, the
    new turn as vLLM's ``/tokenize`` rendered it (see ``to_openai_tokenize_request``).
    """
    prompt = request.get("prompt") or ""
    if not isinstance(prompt, str):
        raise BadRequest("json: cannot unmarshal into Go struct field GenerateRequest.prompt of type string")
    if request.get("template"):
        # Ollama's Go templates cannot be rendered by vLLM, and silently using the
        # model's own template would change the output without telling the client.
        raise BadRequest("template overrides are not supported: vLLM renders the model's own chat template")
    raw = bool(request.get("raw"))
    _context(request)
    suffix = request.get("suffix") or ""
    if suffix:
        if not isinstance(suffix, str) or fim_family is None:
            raise BadRequest("suffix needs a fill-in-the-middle model")
        prompt, raw = fim.to_fim_prompt(fim_family, prompt, suffix), True
    if request.get("raw") and (request.get("system") or request.get("context")):
        raise BadRequest("raw mode does not support template, system, or context")
    params, dropped = sampling(request.get("options"), defaults, max_model_len)
    dropped += [f for f in request if f not in _HANDLED]
    fmt = response_format(request.get("format"))
    extra: dict[str, Any] = {"response_format": fmt} if fmt else {}
    if raw or context_ids is not None:
        ids = None if raw else [*_context(request), *(context_ids or [])]
        body: dict[str, Any] = {"model": served, "prompt": prompt if raw else ids, **params, **extra, **stream_fields()}
        body.update(logprob_fields(request, chat=False))
        # /v1/completions defaults max_tokens to 16 (vLLM 0.32, vllm/entrypoints/openai/protocol.py); Ollama's default
        # is unlimited: ask for what is left of the context (vLLM 0.32+ clamps raw prompts).
        body.setdefault("max_tokens", max(1, (max_model_len or 4096) - len(ids or ())))
        if not raw:
            body["return_token_ids"] = True
        return "/v1/completions", Translated(body, dropped)
    body = {"model": served, "messages": to_openai_messages(_turn(request, prompt)), **params, **extra, **stream_fields()}
    body.update(think_fields(request.get("think")))
    body.update(logprob_fields(request, chat=True))
    body["return_token_ids"] = True  # vLLM 0.10+: prompt and output ids → `context`
    return "/v1/chat/completions", Translated(body, dropped)


def to_openai_tokenize_request(request: Mapping[str, Any], served: str) -> dict[str, Any]:
    """vLLM ``/tokenize`` for the new turn of a generate request that carries ``context``:
    the chat template rendered with a generation prompt, as Ollama renders the template
    for the new prompt and appends it to the earlier ids."""
    _context(request)
    return {"model": served, "messages": to_openai_messages(_turn(request, request.get("prompt") or "")),
            "add_generation_prompt": True}  # fmt: skip


def to_openai_context_tokenize_request(
    request: Mapping[str, Any], served: str, output: str, prompt_ids: list[int] | None
) -> dict[str, Any]:
    """vLLM ``/tokenize`` for the ``context`` of a reply whose backend sent no token ids
    (older vLLM, or a router that drops them). Templated: the turn and the reply rendered
    by the chat template, the reply left open (``continue_final_message``), i.e. the
    rendered prompt followed by the output. With ``prompt_ids`` (the request sent ids):
    the output text alone, to append to them."""
    if prompt_ids is not None:
        return {"model": served, "prompt": output, "add_special_tokens": False}
    messages = [*to_openai_messages(_turn(request, request.get("prompt") or "")), {"role": "assistant", "content": output}]
    return {"model": served, "messages": messages, "add_generation_prompt": False, "continue_final_message": True}


def _turn(request: Mapping[str, Any], prompt: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if request.get("system"):
        messages.append({"role": "system", "content": request["system"]})
    messages.append({"role": "user", "content": prompt, "images": request.get("images") or []})
    return messages


def _context(request: Mapping[str, Any]) -> list[int]:
    context = request.get("context") or []
    if not isinstance(context, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in context):
        raise BadRequest("json: cannot unmarshal into Go struct field GenerateRequest.context of type []int")
    return context


class GenerateStreamTranslator(StreamTranslator):
    TEXT_LINE = b'{"model":%b,"created_at":%b,"response":"%b","done":false}\n'

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
