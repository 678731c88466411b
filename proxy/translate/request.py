"""Request fields that chat and generate share: options, format, think, stream, ids."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from proxy.errors import BadRequest
from proxy.translate.options import to_openai_params

THINK_LEVELS = ("low", "medium", "high", "max")


class Translated(NamedTuple):
    body: dict[str, Any]  # the OpenAI request to send
    dropped: list[str]  # Ollama fields/options knowingly not sent (logged at debug)


def sampling(options: Any, defaults: Mapping[str, Any], max_model_len: int | None = None) -> tuple[dict[str, Any], list[str]]:
    """The model's configured default options under the request's own.

    ``max_tokens`` is capped at the context: Ollama generates until the context is full
    when ``num_predict`` is larger, while vLLM 0.32 refuses a ``max_tokens`` above
    ``max_model_len`` (found by tests/e2e against vLLM 0.32.0).
    """
    if options is not None and not isinstance(options, Mapping):
        raise BadRequest("json: cannot unmarshal options into Go struct field of type map[string]interface {}")
    merged = {**defaults, **(options or {})}
    params, dropped = to_openai_params(merged)
    if max_model_len and params.get("max_tokens", 0) > max_model_len:
        params["max_tokens"] = max_model_len
    return params, dropped


def response_format(fmt: Any) -> dict[str, Any] | None:
    """Ollama ``format`` → vLLM ``response_format``: the form that works unchanged from
    vLLM 0.9 to 0.33; ``json_schema`` requires a ``name`` (vLLM 0.32, protocol.py)."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "schema", "schema": fmt}}
    raise BadRequest(f'invalid format: {_raw(fmt)}; expected "json" or a valid JSON Schema object')


def think_fields(think: Any) -> dict[str, Any]:
    """Ollama ``think`` → the model's reasoning switches, as Ollama sends them to
    llama-server: ``chat_template_kwargs.enable_thinking`` plus ``reasoning_effort`` for a
    level (``max`` is vLLM 0.26+'s top level)."""
    if think is None:
        return {}
    if isinstance(think, bool):
        return {"chat_template_kwargs": {"enable_thinking": think}}
    if think in THINK_LEVELS:
        return {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": think}
    raise BadRequest(f'invalid think value: {_raw(think)} (must be "high", "medium", "low", "max", true, or false)')


def logprob_fields(request: Any, chat: bool) -> dict[str, Any]:
    """Ollama ``logprobs``/``top_logprobs`` → vLLM's: booleans plus a count on chat, one
    count on completions (0 = the sampled token only)."""
    top = request.get("top_logprobs") or 0
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 20:
        raise BadRequest("top_logprobs must be between 0 and 20")
    if not request.get("logprobs") and not top:
        return {}
    if chat:
        return {"logprobs": True, "top_logprobs": top} if top else {"logprobs": True}
    return {"logprobs": top}


def stream_fields() -> dict[str, Any]:
    """Every upstream call streams, so the proxy measures time to first token; usage must
    be asked for explicitly (vLLM's protocol.py, default off since vLLM 0.20)."""
    return {"stream": True, "stream_options": {"include_usage": True}}


def tool_call_id(message_index: int, call_index: int) -> str:
    """A stable id for a tool call the client sent without one (ollama-python drops ids):
    the same history always yields the same ids, so results link to their calls."""
    return f"call_{message_index:04d}{call_index:04d}"


def _raw(value: Any) -> str:
    import orjson  # noqa: PLC0415 - only on the error path

    return orjson.dumps(value).decode()
