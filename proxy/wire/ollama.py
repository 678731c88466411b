"""The Ollama REST API shapes we accept and serve (ollama-api.md §2).

Requests are parsed leniently: unknown fields are ignored (Go's decoder does the same)
and reported at debug level. Responses omit zero metrics and empty optionals, as Go's
``omitempty`` does, but never ``model``, ``created_at``, ``done``, ``response`` (generate)
or ``message.content`` (chat). Durations are integer nanoseconds; times are RFC 3339.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

Think = bool | Literal["low", "medium", "high", "max"]
Format = Literal["json", ""] | dict[str, Any] | None


class ToolCallFunction(TypedDict):
    name: str
    arguments: dict[str, Any]  # always an object on output; ollama-python rejects strings
    index: NotRequired[int]


class ToolCall(TypedDict):
    function: ToolCallFunction
    id: NotRequired[str]  # "call_" + 8 lowercase alphanumerics in current Ollama


class Message(TypedDict):
    role: str  # system | user | assistant | tool; required by ollama-python in responses
    content: str  # may be missing in requests (ollama-python drops ""); always sent back
    thinking: NotRequired[str]
    images: NotRequired[list[str]]  # raw standard base64, no data: prefix
    tool_calls: NotRequired[list[ToolCall]]
    tool_name: NotRequired[str]
    tool_call_id: NotRequired[str]


class Options(TypedDict, total=False):
    """Sampling and runtime options; the mapping to vLLM is translate/options.py."""

    num_predict: int  # -1 unlimited (default), -2 fill the context
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    seed: int  # < 0 means random
    stop: list[str]
    repeat_penalty: float
    presence_penalty: float
    frequency_penalty: float


class ChatRequest(TypedDict, total=False):
    model: str  # required
    messages: list[Message]  # empty: load (or unload with keep_alive 0)
    tools: list[dict[str, Any]]  # [] means no tools (the Python client always sends [])
    format: Format
    options: Options
    stream: bool  # missing means true
    keep_alive: float | str  # seconds or a Go duration; 0 unloads, negative is forever
    think: Think
    logprobs: bool
    top_logprobs: int


class GenerateRequest(TypedDict, total=False):
    model: str
    prompt: str  # empty: load (or unload with keep_alive 0)
    suffix: str
    system: str
    template: str
    context: list[int]
    raw: bool
    images: list[str]
    format: Format
    options: Options
    stream: bool
    keep_alive: float | str
    think: Think


class Metrics(TypedDict, total=False):
    total_duration: int  # ns, request arrival to the last token
    load_duration: int  # ns, arrival until the upstream request was sent
    prompt_eval_count: int  # vLLM usage.prompt_tokens
    prompt_eval_duration: int  # ns, upstream request sent until the first chunk
    eval_count: int  # vLLM usage.completion_tokens
    eval_duration: int  # ns, first chunk until the final chunk


class ChatResponse(Metrics):
    model: str  # echoed exactly as the request spelled it
    created_at: str
    message: Message
    done: bool
    done_reason: NotRequired[str]  # stop | length | load | unload


class GenerateResponse(Metrics):
    model: str
    created_at: str
    response: str
    done: bool
    thinking: NotRequired[str]
    done_reason: NotRequired[str]


class ModelDetails(TypedDict):
    parent_model: str
    format: str
    family: str
    families: list[str]  # never null
    parameter_size: str
    quantization_level: str


class ListedModel(TypedDict):
    name: str  # ollama-js and Open WebUI read this
    model: str  # ollama-python and Copilot read this
    modified_at: str
    size: int
    digest: str  # 64 hex chars, no "sha256:" prefix
    details: ModelDetails


class RunningModel(ListedModel):
    expires_at: str
    size_vram: int
    context_length: NotRequired[int]


class EmbedResponse(TypedDict):
    model: str
    embeddings: list[list[float]]  # L2-normalised, in input order
    total_duration: NotRequired[int]
    load_duration: NotRequired[int]
    prompt_eval_count: NotRequired[int]
