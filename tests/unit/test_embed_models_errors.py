"""Embeddings, model listings and error mapping."""

from __future__ import annotations

import math
from typing import Any

import pytest

from proxy import errors
from proxy.errors import BadRequest
from proxy.translate import embed, models
from proxy.translate.common import keep_alive_seconds

FACTS = models.ModelFacts(
    name="tiny:latest", backend_url="http://h:8000", served="tiny", root="/models/tiny-llama", max_model_len=1024,
    capabilities=("completion",), family=None, parameter_size="", quantization_level="", size=0, seen_ns=10**18,
    options={"temperature": 0.7, "stop": ["<|im_end|>", "User:"]},
)  # fmt: skip


@pytest.mark.parametrize(
    ("value", "inputs"),
    [
        pytest.param("a", ["a"], id="string"),
        pytest.param(["a", "b"], ["a", "b"], id="list"),
        pytest.param("", [], id="empty string loads"),
        pytest.param(None, [], id="missing loads"),
    ],
)
def test_embed_inputs(value: Any, inputs: list[str]) -> None:
    assert embed.embed_inputs({"input": value}) == inputs


def test_embed_input_of_wrong_type() -> None:
    with pytest.raises(BadRequest, match="invalid input type"):
        embed.embed_inputs({"input": ["a", 1]})


def test_embed_request_truncates_like_ollama() -> None:
    body = embed.to_openai_embed_request(["a"], "minilm", truncate=True)
    assert body == {"model": "minilm", "input": ["a"], "truncate_prompt_tokens": -1, "truncation_side": "right"}
    assert embed.to_openai_embed_request(["a"], "minilm", truncate=False) == {"model": "minilm", "input": ["a"]}


@pytest.mark.parametrize(
    ("dims", "expected"),
    [
        pytest.param(None, [0.6, 0.8, 0.0], id="normalised"),
        pytest.param(1, [1.0], id="dimensions cut then renormalised"),
    ],
)
def test_embeddings_are_normalised(dims: int | None, expected: list[float]) -> None:
    (vector,) = embed.to_ollama_embeddings([[3.0, 4.0, 0.0]], dims)
    assert vector == pytest.approx(expected)
    assert math.isclose(sum(v * v for v in vector), 1.0)


def test_vectors_follow_input_order() -> None:
    response = {"data": [{"index": 1, "embedding": [2.0]}, {"index": 0, "embedding": [1.0]}]}
    assert embed.vectors(response, 2) == [[1.0], [2.0]]


def test_tags_entry() -> None:
    (entry,) = models.to_ollama_tags([FACTS])["models"]
    assert entry["name"] == entry["model"] == "tiny:latest"
    assert len(entry["digest"]) == 64 and int(entry["digest"], 16) >= 0
    assert entry["details"]["family"] == "llama" and entry["details"]["families"] == ["llama"]
    assert entry["modified_at"].endswith("Z")


def test_show_has_model_info_and_parameters() -> None:
    shown = models.to_ollama_show(FACTS, "tiny")
    assert shown["model_info"]["llama.context_length"] == 1024
    assert shown["model_info"]["general.architecture"] == "llama"
    assert shown["capabilities"] == ["completion"]
    assert shown["parameters"].splitlines() == [
        f"{'temperature':<30} 0.7",
        f'{"stop":<30} "<|im_end|>"',
        f'{"stop":<30} "User:"',
    ]
    assert "FROM /models/tiny-llama" in shown["modelfile"]


def test_ps_reports_context_length_and_expiry() -> None:
    (entry,) = models.to_ollama_ps([(FACTS, "2318-01-01T00:00:00+00:00", FACTS.size, ("b",))])["models"]
    assert entry["context_length"] == 1024 and entry["expires_at"].startswith("2318")
    assert entry["size_vram"] == entry["size"]


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        pytest.param(
            400,
            b'{"error":{"message":"bad thing","type":"BadRequestError","param":null,"code":400}}',
            "bad thing",
            id="nested shape (0.10+)",
        ),  # fmt: skip
        pytest.param(
            400,
            b'{"object":"error","message":"bad thing","type":"BadRequestError","code":400}',
            "bad thing",
            id="flat shape (<=0.9)",
        ),  # fmt: skip
        pytest.param(401, b'{"error":"Unauthorized"}', "Unauthorized", id="401 string error"),
        pytest.param(404, b'{"detail":"Not Found"}', "Not Found", id="FastAPI detail"),
        pytest.param(
            500, b"Internal Server Error", "vLLM backend b: Internal Server Error", id="plain text 500 names the backend"
        ),
        pytest.param(503, b"", "vLLM backend b: vLLM backend b answered HTTP 503", id="empty body"),
    ],
)
def test_backend_errors(status: int, body: bytes, message: str) -> None:
    exc = errors.parse_backend_error(status, body, "b")
    assert errors.to_ollama_error(exc) == (status, {"error": message})


@pytest.mark.parametrize(
    ("endpoint", "text"),
    [
        pytest.param("chat", "model 'Tiny' not found", id="chat"),
        pytest.param("generate", "model 'Tiny' not found", id="generate"),
        pytest.param("show", "model 'Tiny' not found", id="show"),
        pytest.param("embed", 'model "Tiny" not found, try pulling it first', id="embed (Go %q)"),
        pytest.param("embeddings", 'model "Tiny" not found, try pulling it first', id="embeddings"),
    ],
)
def test_not_found_texts(endpoint: str, text: str) -> None:
    assert errors.to_ollama_error(errors.not_found(endpoint, "Tiny")) == (404, {"error": text})


def test_openai_error_envelope() -> None:
    status, body = errors.to_openai_error(errors.not_found("chat", "x"))
    assert status == 404
    assert body == {"error": {"message": "model 'x' not found", "type": "not_found_error", "param": None, "code": 404}}


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param(0, 0.0, id="zero unloads"),
        pytest.param(0.0, 0.0, id="python client sends 0.0"),
        pytest.param("0", 0.0, id="string zero"),
        pytest.param("5m", 300.0, id="minutes"),
        pytest.param("1h30m", 5400.0, id="compound"),
        pytest.param("300ms", 0.3, id="milliseconds"),
        pytest.param(-1, math.inf, id="negative is forever"),
        pytest.param("-1m", math.inf, id="negative duration is forever"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_keep_alive(value: Any, seconds: float | None) -> None:
    assert keep_alive_seconds(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("10", 'time: missing unit in duration "10"', id="no unit"),
        pytest.param("soon", 'time: invalid duration "soon"', id="garbage"),
    ],
)
def test_keep_alive_errors(value: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        keep_alive_seconds(value)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        pytest.param(
            b'{"error":{"message":"\\"auto\\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set","code":400}}',
            "this model does not support tools: the vLLM backend b must be started with --enable-auto-tool-choice",
            id="tools without a parser says which flags",
        ),  # fmt: skip
        pytest.param(
            b'{"error":{"message":"2 validation errors: body.stop List should have at most 4 items","code":400}}',
            "too many stop strings: vLLM accepts at most 4",
            id="too many stop strings",
        ),  # fmt: skip
    ],
)
def test_backend_errors_get_a_hint(body: bytes, fragment: str) -> None:
    status, reply = errors.to_ollama_error(errors.parse_backend_error(400, body, "b"))
    assert status == 400 and reply["error"].startswith(fragment)
