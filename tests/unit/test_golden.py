"""Real vLLM wire captures (tests/golden/captures/vllm-0.32.0, recorded by
scripts/capture_vllm.py) run through the translators: what vLLM really sends, not what a
spec says it sends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from proxy import errors
from proxy.encoder import Encoder
from proxy.translate.chat import ChatStreamTranslator
from proxy.translate.generate import GenerateStreamTranslator
from proxy.translate.stream import StreamTranslator

CAPTURES = Path(__file__).resolve().parents[1] / "golden" / "captures" / "vllm-0.32.0"
T = "2026-01-01T00:00:00.000000000Z"


def reference(name: str) -> tuple[str, str | None, dict[str, Any] | None, list[dict[str, Any]]]:
    """Independent reading of a capture with the stdlib: text, finish reason, usage, calls."""
    text, finish, usage = "", None, None
    calls: dict[int, dict[str, Any]] = {}
    for line in (CAPTURES / name).read_text().splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[6:])
        usage = event.get("usage") or usage
        for choice in event.get("choices", []):
            delta = choice.get("delta") or {}
            text += delta.get("content") or choice.get("text") or ""
            finish = choice.get("finish_reason") or finish
            for call in delta.get("tool_calls") or []:
                entry = calls.setdefault(call["index"], {"name": "", "arguments": ""})
                entry["name"] += (call.get("function") or {}).get("name") or ""
                entry["arguments"] += (call.get("function") or {}).get("arguments") or ""
    return text, finish, usage, [calls[i] for i in sorted(calls)]


def translate(name: str, translator: StreamTranslator, step: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The capture through the relays' own ``Encoder``, in reads of ``step`` bytes."""
    raw = (CAPTURES / name).read_bytes()
    encoder = Encoder(translator, lambda: T)
    pieces = [raw[i : i + step] for i in range(0, len(raw), step)]
    ndjson = b"".join(encoder.feed(piece, 10 + n) for n, piece in enumerate(pieces)) + encoder.finish(20 + len(pieces))
    assert ndjson.endswith(b"\n")
    *out, final = [json.loads(line) for line in ndjson.splitlines()]
    return out, final


def fold_capture(name: str, translator: StreamTranslator, key: str) -> dict[str, Any]:
    """The same capture as a ``stream: false`` reply: the encoder in its folding mode."""
    encoder = Encoder(translator, lambda: T, key)
    assert encoder.feed((CAPTURES / name).read_bytes(), 10) == b""
    folded: dict[str, Any] = json.loads(encoder.finish(20))
    return folded


@pytest.mark.parametrize("step", [1, 7, 64, 100_000], ids=lambda s: f"reads of {s} bytes")
@pytest.mark.parametrize(
    ("capture", "kind", "done_reason"),
    [
        pytest.param("chat_stream_usage.sse", "chat", "length", id="chat stream with usage"),
        pytest.param("chat_stream_length.sse", "chat", "length", id="chat stream cut by max_tokens"),
        pytest.param("completions_stream.sse", "generate", "length", id="raw completions stream"),
    ],
)
def test_text_streams(capture: str, kind: str, done_reason: str, step: int) -> None:
    text, _, usage, _ = reference(capture)
    translator = ChatStreamTranslator("tiny", 0) if kind == "chat" else GenerateStreamTranslator("tiny", 0)
    out, final = translate(capture, translator, step)
    pieces = [o["message"]["content"] for o in out] if kind == "chat" else [o["response"] for o in out]
    assert "".join(pieces) == text
    assert all(o["done"] is False for o in out) and final["done"] is True
    assert final["done_reason"] == done_reason
    if usage:
        assert final["eval_count"] == usage["completion_tokens"]
        assert final["prompt_eval_count"] == usage["prompt_tokens"]
    folded = fold_capture(capture, type(translator)("tiny", 0), "message" if kind == "chat" else "")
    folded_text = folded["message"]["content"] if kind == "chat" else folded["response"]
    assert folded_text == text and folded["done_reason"] == done_reason


def test_streamed_tool_call_arrives_whole_with_object_arguments() -> None:
    _, _, _, calls = reference("chat_tool_required_stream.sse")
    out, final = translate("chat_tool_required_stream.sse", ChatStreamTranslator("tiny", 0), 5)
    assert [o for o in out if o["message"]["content"]] == []
    got = final["message"]["tool_calls"]
    assert [c["function"]["name"] for c in got] == [c["name"] for c in calls]
    assert [c["function"]["arguments"] for c in got] == [json.loads(c["arguments"]) for c in calls]
    assert all(c["id"].startswith("chatcmpl-tool-") for c in got)
    assert final["done_reason"] == "stop"  # native Ollama reports stop for tool calls


def test_tool_call_cut_off_by_max_tokens_is_not_a_call() -> None:
    out, final = translate("chat_tool_required_truncated_stream.sse", ChatStreamTranslator("tiny", 0), 64)
    assert "tool_calls" not in final["message"]
    assert final["done_reason"] == "length"


@pytest.mark.parametrize(
    ("capture", "status", "fragment"),
    [
        pytest.param("chat_tools_empty.json", 400, "`tools` must not be an empty array", id="tools: [] rejected"),
        pytest.param("chat_unknown_model.json", 404, "The model `nope` does not exist", id="unknown model"),
        pytest.param("embed_unknown_model.json", 404, "The model `nope` does not exist", id="unknown embedding model"),
        pytest.param("chat_context_overflow.json", 400, "maximum context length is 1024 tokens", id="context overflow"),
        pytest.param("embed_overflow.json", 400, "maximum context length", id="embedding overflow"),
        pytest.param("embed_dimensions.json", 400, "does not support Matryoshka", id="dimensions on a non-MRL model"),
        pytest.param("chat_stop_5_strings.json", 400, "at most 4 items", id="more than four stop strings"),
        pytest.param("chat_content_type_text_plain.json", 400, "Only 'application/json' is allowed", id="content type"),
    ],
)
def test_captured_errors_map_to_ollama_errors(capture: str, status: int, fragment: str) -> None:
    meta = json.loads((CAPTURES / capture.replace(".json", ".meta.json")).read_text())
    assert meta["status"] == status
    exc = errors.parse_backend_error(meta["status"], (CAPTURES / capture).read_bytes(), "b")
    got_status, body = errors.to_ollama_error(exc)
    assert got_status == status and fragment in body["error"] and list(body) == ["error"]
