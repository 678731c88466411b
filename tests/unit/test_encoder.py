"""The one SSE → Ollama encoder (proxy/encoder.py): the same bytes whatever the read
boundaries, the folding mode of ``stream: false``, and what survives an error."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.encoder import Encoder, error_line
from proxy.errors import BackendError
from proxy.translate.chat import ChatStreamTranslator
from proxy.translate.generate import GenerateStreamTranslator

T = "2026-01-01T00:00:00.000000000Z"


def event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def token(text: str) -> bytes:
    return event({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})


STOP = event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
USAGE = event({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
BODY = token("Hel") + token("lo ✓") + STOP + USAGE + b"data: [DONE]\n\n"


def chat(key: str | None = None) -> Encoder:
    return Encoder(ChatStreamTranslator("tiny", 0), lambda: T, key)


def run(encoder: Encoder, pieces: list[bytes]) -> bytes:
    return b"".join(encoder.feed(p, 1 + n) for n, p in enumerate(pieces)) + encoder.finish(100)


def test_output_is_ndjson_lines_ending_in_the_final_object() -> None:
    lines = [orjson.loads(line) for line in run(chat(), [BODY]).splitlines()]
    assert [line["message"]["content"] for line in lines] == ["Hel", "lo ✓", ""]
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 2


@pytest.mark.parametrize("step", [1, 2, 3, 5, 13], ids=lambda s: f"reads of {s} bytes")
def test_the_same_lines_whatever_the_read_boundaries(step: int) -> None:
    whole = run(chat(), [BODY])
    split = run(chat(), [BODY[i : i + step] for i in range(0, len(BODY), step)])
    strip = [{k: v for k, v in orjson.loads(line).items() if not k.endswith("duration")} for line in split.splitlines()]
    assert strip == [{k: v for k, v in orjson.loads(line).items() if not k.endswith("duration")} for line in whole.splitlines()]


def test_an_event_left_unterminated_at_the_end_still_counts() -> None:
    lines = run(chat(), [token("a") + STOP.rstrip(b"\n")]).splitlines()
    assert orjson.loads(lines[-1])["done_reason"] == "stop"


@pytest.mark.parametrize(
    ("key", "text"),
    [
        pytest.param("message", lambda o: o["message"]["content"], id="chat"),
        pytest.param("", lambda o: o["response"], id="generate"),
    ],
)
def test_folding_returns_nothing_until_the_one_object(key: str, text: Any) -> None:
    translator = ChatStreamTranslator("tiny", 0) if key else GenerateStreamTranslator("tiny", 0)
    encoder = Encoder(translator, lambda: T, key)
    assert encoder.feed(BODY, 1) == b""
    folded = orjson.loads(encoder.finish(2))
    assert text(folded) == "Hello ✓" and folded["done"] is True


def test_lines_before_a_bad_event_in_the_same_read_are_salvaged() -> None:
    encoder = chat()
    with pytest.raises(BackendError) as info:
        encoder.feed(token("ok") + event([1, 2]) + token("lost"), 1)
    assert info.value.status == 502 and "unexpected shape" in info.value.message
    assert [orjson.loads(line)["message"]["content"] for line in encoder.salvage().splitlines()] == ["ok"]
    assert encoder.salvage() == b""  # handed out once


def test_lines_before_an_incomplete_end_are_salvaged() -> None:
    encoder = chat()
    encoder.feed(token("a"), 1)
    encoder.feed(token("b").rstrip(b"\n"), 2)
    with pytest.raises(BackendError, match="ended before the reply was complete"):
        encoder.finish(3)
    assert orjson.loads(encoder.salvage())["message"]["content"] == "b"


def test_folding_salvages_nothing() -> None:
    encoder = chat("message")
    with pytest.raises(BackendError):
        encoder.feed(token("ok") + event("x"), 1)
    assert encoder.salvage() == b""


def test_an_empty_read_or_a_keepalive_comment_writes_nothing() -> None:
    encoder = chat()
    assert encoder.feed(b"", 1) == b"" and encoder.feed(b": keep-alive\n\n", 2) == b""
    assert encoder.feed(event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}), 3) == b""


def test_error_line() -> None:
    assert error_line('vLLM "x"') == b'{"error":"vLLM \\"x\\""}\n'
