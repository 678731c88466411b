"""The less travelled rows of the pure translators: odd but legal input from clients and from
vLLM, and the refusals that name what was wrong. Each row is a reply a client would see."""

from __future__ import annotations

import base64
import math
from typing import Any

import orjson
import pytest

from proxy.errors import BackendError, BadRequest
from proxy.translate.chat import ChatStreamTranslator, to_openai_chat_request
from proxy.translate.common import MAX_KEEP_ALIVE_S, arguments_to_object, image_data_url, keep_alive_seconds, l2_normalise
from proxy.translate.embed import to_ollama_embeddings, vectors
from proxy.translate.fields import check_message, go_kind
from proxy.translate.generate import GenerateStreamTranslator, to_openai_context_tokenize_request
from proxy.translate.models import ModelFacts, to_ollama_ps, to_ollama_show
from proxy.translate.options import to_openai_params
from proxy.translate.stream import to_ollama_logprobs

T = "2026-01-01T00:00:00.000000000Z"


def events(translator: Any, *chunks: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    translator.sent_ns = 1_000
    out: list[dict[str, Any]] = []
    for i, chunk in enumerate(chunks):
        out += translator.feed(orjson.dumps(chunk), T, 2_000 + i)
    return out, translator.finish(T, 10_000)


def choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


# -- chat requests: tool history ---------------------------------------------------------


def test_tool_result_without_id_or_name_after_no_calls_is_sent_bare() -> None:
    body = to_openai_chat_request({"messages": [{"role": "tool", "content": "22 C"}]}, "tiny", {}).body
    assert body["messages"] == [{"role": "tool", "content": "22 C"}]


def test_tool_call_that_is_not_an_object_is_refused_like_ollama() -> None:
    with pytest.raises(BadRequest, match="cannot unmarshal .* api.ToolCall"):
        to_openai_chat_request({"messages": [{"role": "assistant", "tool_calls": ["f()"]}]}, "tiny", {})


# -- common helpers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments, expected",
    [
        pytest.param(None, {}, id="missing arguments are no arguments"),
        pytest.param("", {}, id="empty string is no arguments"),
        pytest.param('{"city": "Oslo"}', {"city": "Oslo"}, id="JSON string is parsed"),
        pytest.param({"city": "Oslo"}, {"city": "Oslo"}, id="object is kept"),
    ],
)
def test_tool_arguments_to_object(arguments: Any, expected: dict[str, Any]) -> None:
    assert arguments_to_object(arguments) == expected


@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param("{not json", id="unreadable JSON string"),
        pytest.param("[1, 2]", id="JSON that is not an object"),
        pytest.param(["city"], id="a list"),
        pytest.param(3, id="a number"),
    ],
)
def test_tool_arguments_that_are_not_an_object_are_refused(arguments: Any) -> None:
    with pytest.raises(BadRequest, match="tool call arguments must be a JSON object"):
        arguments_to_object(arguments)


WEBP = base64.b64encode(b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 16).decode()
UNKNOWN = base64.b64encode(b"\x00\x01\x02\x03" * 8).decode()


@pytest.mark.parametrize(
    "image, media",
    [
        pytest.param(WEBP, "image/webp", id="webp from its RIFF header"),
        pytest.param(UNKNOWN, "image/jpeg", id="unknown bytes default to jpeg"),
        pytest.param(base64.b64encode(b"GIF89a" + b"\x00" * 8).decode(), "image/gif", id="gif"),
    ],
)
def test_image_media_type_is_sniffed(image: str, media: str) -> None:
    assert image_data_url(image) == f"data:{media};base64,{image}"


def test_image_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(BadRequest, match="images must be base64 strings"):
        image_data_url(42)


def test_zero_vector_is_left_as_is_not_divided_by_zero() -> None:
    assert l2_normalise([0.0, 0.0]) == [0.0, 0.0]


@pytest.mark.parametrize(
    "value, seconds",
    [
        pytest.param(None, None, id="absent"),
        pytest.param(-1, math.inf, id="negative number is forever"),
        pytest.param("-5m", math.inf, id="negative duration is forever"),
        pytest.param("1h30m", 5400.0, id="compound Go duration"),
        pytest.param("0", 0.0, id="zero string"),
        pytest.param(1e18, MAX_KEEP_ALIVE_S, id="a number past Go's longest duration is that duration"),
        pytest.param(10**400, MAX_KEEP_ALIVE_S, id="an integer too big for a float"),
        pytest.param("2562047h", 2562047 * 3600.0, id="Go's longest whole-hour duration"),
    ],
)
def test_keep_alive_seconds(value: Any, seconds: float | None) -> None:
    assert keep_alive_seconds(value) == seconds


@pytest.mark.parametrize(
    "value, message",
    [
        pytest.param(True, "cannot unmarshal bool", id="bool"),
        pytest.param(["5m"], "cannot unmarshal keep_alive", id="list"),
        pytest.param("5", 'missing unit in duration "5"', id="number string without unit"),
        pytest.param("soon", 'invalid duration "soon"', id="not a duration"),
        pytest.param("2562048h", 'invalid duration "2562048h"', id="past Go's longest duration"),
    ],
)
def test_keep_alive_errors(value: Any, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        keep_alive_seconds(value)


# -- options, embeddings, models ---------------------------------------------------------


def test_no_options_map_to_nothing() -> None:
    assert to_openai_params(None) == ({}, [])


def test_options_that_are_not_an_object_are_refused() -> None:
    with pytest.raises(BadRequest, match="cannot unmarshal options"):
        to_openai_params(["temperature"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "response",
    [
        pytest.param({"data": [{"index": 0, "embedding": [1.0]}]}, id="fewer vectors than inputs"),
        pytest.param({"data": [{"index": 0, "embedding": "x"}, {"index": 1, "embedding": [1.0]}]}, id="not a vector"),
        pytest.param({}, id="no data"),
    ],
)
def test_embeddings_response_of_the_wrong_shape_is_a_backend_error(response: dict[str, Any]) -> None:
    with pytest.raises(BackendError, match="unexpected embeddings response"):
        vectors(response, 2)


@pytest.mark.parametrize(
    "dimensions", [pytest.param(-1, id="negative"), pytest.param(True, id="bool"), pytest.param("2", id="string")]
)
def test_embed_dimensions_must_be_a_count(dimensions: Any) -> None:
    with pytest.raises(BadRequest, match="cannot unmarshal dimensions"):
        to_ollama_embeddings([[1.0, 0.0]], dimensions)


FACTS = ModelFacts(
    name="tiny:latest", backend_url="http://b", served="tiny", root="/m/tiny", max_model_len=None,
    capabilities=("completion",), family=None, parameter_size="", quantization_level="", size=0, seen_ns=0, options={},
)  # fmt: skip


def test_a_model_without_a_known_context_length_reports_none() -> None:
    (entry,) = to_ollama_ps([(FACTS, "2318-01-01T00:00:00Z", 0, ())])["models"]
    assert "context_length" not in entry
    show = to_ollama_show(FACTS, "tiny")
    assert not any(key.endswith(".context_length") for key in show["model_info"])


# -- streams from vLLM -------------------------------------------------------------------


def test_unreadable_stream_event_is_a_backend_error() -> None:
    with pytest.raises(BackendError, match="unreadable stream event"):
        ChatStreamTranslator("tiny", 0).feed(b"{not json", T, 1)


def test_tool_call_sent_whole_without_index_or_id_is_returned_whole() -> None:
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    _, final = events(ChatStreamTranslator("tiny", 0), choice({"tool_calls": [call]}, "tool_calls"))
    assert final["message"]["tool_calls"] == [{"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Oslo"}}}]
    assert final["done_reason"] == "stop"


def test_generate_returns_tool_calls_at_the_top_level() -> None:
    call = {"index": 0, "id": "call_1", "function": {"name": "f", "arguments": "{}"}}
    _, final = events(GenerateStreamTranslator("tiny", 0), choice({"tool_calls": [call]}, "tool_calls"))
    assert final["tool_calls"] == [{"function": {"index": 0, "name": "f", "arguments": {}}, "id": "call_1"}]


def test_usage_without_prompt_tokens_reports_only_the_eval_count() -> None:
    usage = {"choices": [], "usage": {"completion_tokens": 3, "total_tokens": 3}}
    _, final = events(ChatStreamTranslator("tiny", 0), choice({"content": "hi"}, "stop"), usage)
    assert final["eval_count"] == 3 and "prompt_eval_count" not in final


@pytest.mark.parametrize(
    "logprobs, expected",
    [
        pytest.param(
            {"content": [{"token": "a", "logprob": -0.5, "bytes": [97]}]},
            [{"token": "a", "logprob": -0.5, "bytes": [97]}],
            id="chat entry without top_logprobs",
        ),
        pytest.param(
            {"tokens": ["a", "b"], "token_logprobs": [-0.5, None], "top_logprobs": [None, {"b": -0.1}]},
            [
                {"token": "a", "logprob": -0.5, "bytes": [97]},
                {
                    "token": "b",
                    "logprob": -9999.0,
                    "bytes": [98],
                    "top_logprobs": [{"token": "b", "logprob": -0.1, "bytes": [98]}],
                },
            ],
            id="completions: a missing value and a missing top list",
        ),
        pytest.param({"content": []}, None, id="no entries"),
    ],
)
def test_logprobs_edge_shapes(logprobs: dict[str, Any], expected: list[dict[str, Any]] | None) -> None:
    assert to_ollama_logprobs(logprobs) == expected


# -- type checks the translators keep for callers that skip proxy/translate/fields.py ----------


@pytest.mark.parametrize(
    "request_, message",
    [
        pytest.param({"messages": [], "tools": {"f": 1}}, "ChatRequest.tools of type api.Tools", id="tools not a list"),
        pytest.param(
            {"messages": [{"role": "user", "content": 3}]}, "Message.messages.content of type string", id="content not text"
        ),
        pytest.param({"messages": [], "options": [1]}, "cannot unmarshal options", id="options not an object"),
    ],
)
def test_chat_translator_refuses_wrong_types(request_: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        to_openai_chat_request(request_, "tiny", {})


@pytest.mark.parametrize(
    "message, error",
    [
        pytest.param({"role": "user", "images": [1]}, "messages.images of type api.ImageData", id="image not base64 text"),
        pytest.param(
            {"role": "assistant", "tool_calls": ["f"]}, "messages.tool_calls of type api.ToolCall", id="call not an object"
        ),
        pytest.param(
            {"role": "assistant", "tool_calls": [{"function": "f"}]}, "api.ToolCallFunction", id="function not an object"
        ),
        pytest.param(
            {"role": "assistant", "tool_calls": [{"id": 1, "function": {}}]}, "tool_calls.id of type string", id="id a number"
        ),
        pytest.param(
            {"role": "assistant", "tool_calls": [{"function": {"name": 1}}]}, "function.name of type string", id="name a number"
        ),
    ],
)
def test_message_fields_are_checked_as_go_decodes_them(message: dict[str, Any], error: str) -> None:
    with pytest.raises(BadRequest, match=error):
        check_message(message)


@pytest.mark.parametrize(
    "value, kind",
    [
        pytest.param(True, "bool", id="bool"),
        pytest.param({"a": 1}, "object", id="object"),
        pytest.param([1], "array", id="array"),
    ],
)
def test_go_kind_names_json_values_as_go_does(value: Any, kind: str) -> None:
    assert go_kind(value) == kind


def test_context_tokenize_with_prompt_ids_tokenizes_the_output_alone() -> None:
    body = to_openai_context_tokenize_request({"prompt": "hi"}, "tiny", "Hello", [1, 2])
    assert body == {"model": "tiny", "prompt": "Hello", "add_special_tokens": False}
