"""The subset of vLLM's OpenAI-compatible API we send and read (vllm-api.md §5-§10).

vLLM sends full ``model_dump``s, so many keys arrive as ``null``: readers treat null and
absent alike. Reasoning arrives as ``reasoning`` (0.12+) or ``reasoning_content`` (<= 0.12).
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class ChatMessage(TypedDict):
    role: str
    content: NotRequired[str | list[dict[str, Any]] | None]
    name: NotRequired[str]
    tool_calls: NotRequired[list[dict[str, Any]]]  # function.arguments is a JSON string
    tool_call_id: NotRequired[str]
    reasoning: NotRequired[str]


class ChatCompletionRequest(TypedDict, total=False):
    model: str  # the served name, never the Ollama alias
    messages: list[ChatMessage]
    stream: bool
    stream_options: dict[str, bool]  # {"include_usage": true}: usage chunk before [DONE]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int  # vLLM extra; -1 disables
    min_p: float
    seed: int
    stop: list[str]
    repetition_penalty: float  # vLLM extra
    presence_penalty: float
    frequency_penalty: float
    response_format: dict[str, Any]
    tools: list[dict[str, Any]]  # never [] (vLLM answers 400)
    chat_template_kwargs: dict[str, Any]


class CompletionRequest(TypedDict, total=False):
    model: str
    prompt: str | list[int]
    stream: bool
    stream_options: dict[str, bool]
    max_tokens: int  # defaults to 16 upstream, so always sent


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ToolCallDelta(TypedDict, total=False):
    index: int  # fragments of one call share an index
    id: str | None
    type: str | None
    function: dict[str, str | None]  # name once, arguments in fragments


class Delta(TypedDict, total=False):
    role: str
    content: str | None
    reasoning: str | None
    reasoning_content: str | None
    tool_calls: list[ToolCallDelta]


class Choice(TypedDict, total=False):
    index: int
    delta: Delta  # chat chunks
    message: Delta  # chat responses
    text: str  # completions
    finish_reason: str | None  # stop | length | tool_calls | abort | error


class ChatCompletionChunk(TypedDict, total=False):
    id: str
    model: str
    choices: list[Choice]  # [] on the usage-only final chunk
    usage: Usage | None


class EmbeddingData(TypedDict):
    index: int
    embedding: list[float]


class EmbeddingResponse(TypedDict):
    data: list[EmbeddingData]
    usage: Usage


class ModelCard(TypedDict):
    id: str
    root: NotRequired[str | None]
    parent: NotRequired[str | None]
    max_model_len: NotRequired[int | None]
