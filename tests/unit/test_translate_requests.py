"""Request translation: Ollama bodies → the vLLM request that is sent."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from proxy.errors import BadRequest
from proxy.translate.chat import to_openai_chat_request
from proxy.translate.generate import to_openai_generate_request

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\0" * 16).decode()
STREAM = {"stream": True, "stream_options": {"include_usage": True}}
USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        pytest.param({"messages": USER}, {"messages": USER}, id="plain messages"),
        pytest.param({"messages": USER, "tools": []}, {"messages": USER}, id="empty tools list is not forwarded"),
        pytest.param({"messages": [{"role": "User", "content": "hi"}]}, {"messages": USER}, id="role is lower-cased"),
        pytest.param(
            {"messages": [{"role": "assistant"}]},
            {"messages": [{"role": "assistant", "content": ""}]},
            id="missing content is empty",
        ),  # fmt: skip
        pytest.param(
            {"messages": USER, "format": "json"},
            {"messages": USER, "response_format": {"type": "json_object"}},
            id="format json → json_object",
        ),  # fmt: skip
        pytest.param(
            {"messages": USER, "format": {"type": "object"}},
            {
                "messages": USER,
                "response_format": {"type": "json_schema", "json_schema": {"name": "schema", "schema": {"type": "object"}}},
            },
            id="format schema → json_schema with a name",
        ),
        pytest.param({"messages": USER, "format": ""}, {"messages": USER}, id="empty format means none"),
        pytest.param({"messages": USER, "options": {"num_predict": 5}}, {"messages": USER, "max_tokens": 5}, id="options mapped"),
        pytest.param(
            {"messages": USER, "think": False},
            {"messages": USER, "chat_template_kwargs": {"enable_thinking": False}},
            id="think false",
        ),  # fmt: skip
        pytest.param(
            {"messages": USER, "think": "high"},
            {"messages": USER, "chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": "high"},
            id="think level",
        ),  # fmt: skip
        pytest.param(
            {"messages": [{"role": "user", "content": "see", "images": [PNG, JPEG]}]},
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "see"},
                            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                            {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG}"}},
                        ],
                    }
                ]
            },
            id="images become data-URL parts with sniffed media types",
        ),  # fmt: skip
        pytest.param(
            {"messages": [{"role": "assistant", "thinking": "hmm", "content": "ok"}]},
            {"messages": [{"role": "assistant", "content": "ok", "reasoning": "hmm"}]},
            id="thinking history is sent as reasoning",
        ),
    ],
)
def test_chat_request(request_: dict[str, Any], expected: dict[str, Any]) -> None:
    translated = to_openai_chat_request({"model": "Tiny", **request_}, "tiny", {})
    assert translated.body == {"model": "tiny", **STREAM, **expected}


def test_tool_history_gets_stable_ids_linking_results_to_calls() -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}},
            {"function": {"name": "get_time", "arguments": '{"tz": "JST"}'}},
        ]},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        {"role": "tool", "content": "noon", "tool_name": "get_time"},
    ]  # fmt: skip
    body = to_openai_chat_request({"messages": messages}, "tiny", {}).body
    calls = body["messages"][1]["tool_calls"]
    assert [c["function"]["arguments"] for c in calls] == ['{"city":"Tokyo"}', '{"tz":"JST"}']
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in calls)
    assert body["messages"][2] == {"role": "tool", "content": "sunny", "tool_call_id": calls[0]["id"], "name": "get_weather"}
    assert body["messages"][3]["tool_call_id"] == calls[1]["id"]
    again = to_openai_chat_request({"messages": messages}, "tiny", {}).body
    assert again == body


def test_model_defaults_sit_under_request_options() -> None:
    body = to_openai_chat_request(
        {"messages": USER, "options": {"temperature": 0.2}}, "tiny", {"temperature": 0.7, "top_k": 20}
    ).body
    assert body["temperature"] == 0.2 and body["top_k"] == 20


def test_unknown_fields_are_reported_as_dropped() -> None:
    translated = to_openai_chat_request({"messages": USER, "truncate": True, "options": {"num_ctx": 1}}, "tiny", {})
    assert set(translated.dropped) == {"truncate", "num_ctx"}


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        pytest.param({"format": 5}, 'invalid format: 5; expected "json" or a valid JSON Schema object', id="bad format"),
        pytest.param({"format": "yaml"}, "invalid format", id="format string other than json"),
        pytest.param({"think": "extreme"}, "invalid think value", id="bad think level"),
        pytest.param({"messages": [{"role": "user", "images": ["***"]}]}, "illegal base64", id="undecodable image"),
        pytest.param(
            {"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}]},
            "must be a JSON object",
            id="tool arguments not an object",
        ),  # fmt: skip
        pytest.param({"messages": ["hi"]}, "cannot unmarshal", id="message not an object"),
    ],
)
def test_chat_request_errors(request_: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=message.replace("(", r"\(")):
        to_openai_chat_request({"messages": USER, **request_}, "tiny", {})


@pytest.mark.parametrize(
    ("request_", "path", "expected"),
    [
        pytest.param(
            {"prompt": "hi"},
            "/v1/chat/completions",
            {"messages": USER, "return_token_ids": True},
            id="prompt → one user message, token ids asked for context",
        ),  # fmt: skip
        pytest.param(
            {"prompt": "hi", "system": "be brief"},
            "/v1/chat/completions",
            {"messages": [{"role": "system", "content": "be brief"}, *USER], "return_token_ids": True},
            id="system → system message",
        ),  # fmt: skip
        pytest.param(
            {"prompt": "hi", "logprobs": True, "top_logprobs": 2},
            "/v1/chat/completions",
            {"messages": USER, "return_token_ids": True, "logprobs": True, "top_logprobs": 2},
            id="logprobs",
        ),  # fmt: skip
        pytest.param(
            {"prompt": "x", "raw": True, "logprobs": True},
            "/v1/completions",
            {"prompt": "x", "max_tokens": 1024, "logprobs": 0},
            id="raw logprobs is a count",
        ),  # fmt: skip
        pytest.param(
            {"prompt": "def f(", "raw": True},
            "/v1/completions",
            {"prompt": "def f(", "max_tokens": 1024},
            id="raw → completions with max_tokens from the context",
        ),  # fmt: skip
        pytest.param(
            {"prompt": "x", "raw": True, "options": {"num_predict": 3}},
            "/v1/completions",
            {"prompt": "x", "max_tokens": 3},
            id="raw keeps num_predict",
        ),  # fmt: skip
    ],
)
def test_generate_request(request_: dict[str, Any], path: str, expected: dict[str, Any]) -> None:
    got_path, translated = to_openai_generate_request({"model": "tiny", **request_}, "tiny", {}, 1024)
    assert got_path == path
    assert translated.body == {"model": "tiny", **STREAM, **expected}


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        pytest.param({"raw": True, "system": "s"}, "raw mode does not support template, system, or context", id="raw+system"),
        pytest.param({"template": "{{ .Prompt }}"}, "template overrides are not supported", id="template"),
        pytest.param(
            {"raw": True, "context": [1, 2]}, "raw mode does not support template, system, or context", id="raw+context"
        ),
        pytest.param({"context": ["a"]}, "cannot unmarshal", id="context not token ids"),
        pytest.param({"top_logprobs": 21}, "top_logprobs must be between 0 and 20", id="top_logprobs over 20"),
        pytest.param({"prompt": 5}, "cannot unmarshal", id="prompt not a string"),
    ],
)
def test_generate_request_errors(request_: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        to_openai_generate_request({"model": "tiny", "prompt": "p", **request_}, "tiny", {}, 1024)


def test_generate_with_context_continues_from_token_ids() -> None:
    path, translated = to_openai_generate_request({"prompt": "more", "context": [5, 6, 7]}, "tiny", {}, 1024, [8, 9])
    assert path == "/v1/completions"
    assert translated.body == {"model": "tiny", **STREAM, "prompt": [5, 6, 7, 8, 9], "max_tokens": 1019, "return_token_ids": True}


def test_tokenize_request_renders_the_new_turn() -> None:
    from proxy.translate.generate import to_openai_tokenize_request

    body = to_openai_tokenize_request({"prompt": "more", "system": "s"}, "tiny")
    assert body == {"model": "tiny", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "more"}],
                    "add_generation_prompt": True}  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({"logprobs": True}, {"logprobs": True}, id="logprobs only"),
        pytest.param({"logprobs": True, "top_logprobs": 3}, {"logprobs": True, "top_logprobs": 3}, id="with top"),
        pytest.param({"top_logprobs": 3}, {"logprobs": True, "top_logprobs": 3}, id="top alone implies logprobs"),
        pytest.param({"logprobs": False}, {}, id="off"),
    ],
)
def test_chat_logprobs(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    body = to_openai_chat_request({"messages": USER, **fields}, "tiny", {}).body
    assert {k: body[k] for k in ("logprobs", "top_logprobs") if k in body} == expected


@pytest.mark.parametrize(
    ("family", "prompt"),
    [
        pytest.param("qwen", "<|fim_prefix|>def f(<|fim_suffix|>)\n<|fim_middle|>", id="qwen coder"),
        pytest.param("starcoder", "<fim_prefix>def f(<fim_suffix>)\n<fim_middle>", id="starcoder"),
        pytest.param("codellama", "<PRE> def f( <SUF>)\n <MID>", id="code llama"),
        pytest.param("codestral", "[SUFFIX])\n[PREFIX]def f(", id="codestral suffix first"),
    ],
)
def test_suffix_builds_the_familys_fim_prompt(family: str, prompt: str) -> None:
    path, translated = to_openai_generate_request({"prompt": "def f(", "suffix": ")\n"}, "coder", {}, 1024, None, family)
    assert path == "/v1/completions"
    assert translated.body["prompt"] == prompt and "return_token_ids" not in translated.body


def test_suffix_without_a_fim_family_is_refused() -> None:
    with pytest.raises(BadRequest, match="fill-in-the-middle"):
        to_openai_generate_request({"prompt": "a", "suffix": "b"}, "tiny", {}, 1024)


@pytest.mark.parametrize(
    ("names", "family"),
    [
        pytest.param(("Qwen/Qwen2.5-Coder-7B",), "qwen", id="qwen coder"),
        pytest.param(("coder", "/models/bigcode/starcoder2-3b"), "starcoder", id="from the model path"),
        pytest.param(("tiny",), None, id="not a FIM model"),
    ],
)
def test_fim_family_is_recognised_from_names(names: tuple[str, ...], family: str | None) -> None:
    from proxy.translate.fim import recognise

    assert recognise(*names) == family


@pytest.mark.parametrize(
    ("num_predict", "max_tokens"),
    [
        pytest.param(100, 100, id="within the context"),
        pytest.param(5000, 1024, id="capped at the context (vLLM 0.32 refuses more)"),
    ],
)
def test_num_predict_is_capped_at_the_context(num_predict: int, max_tokens: int) -> None:
    body = to_openai_chat_request({"messages": USER, "options": {"num_predict": num_predict}}, "tiny", {}, 1024).body
    assert body["max_tokens"] == max_tokens
