"""``StreamTranslator.line``: vLLM's plain text chunks go straight to the Ollama line, without a
parse. For every event it takes, the bytes and the translator's state must be exactly what
``feed`` + ``orjson.dumps`` give; every other event is left to ``feed`` (None)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.errors import BackendError
from proxy.translate.chat import ChatStreamTranslator
from proxy.translate.generate import GenerateStreamTranslator
from proxy.translate.stream import StreamTranslator

T = "2026-01-01T00:00:00.000000000Z"
ID = b'{"id":"chatcmpl-a245c66370327a23","object":"chat.completion.chunk","created":1795801522,"model":"tiny",'
CMPL = b'{"id":"cmpl-99ddbb154cfc8f28","object":"text_completion","created":1795801524,"model":"tiny",'


def chat_chunk(text: bytes, tail: bytes = b',"token_ids":null}]}') -> bytes:
    return ID + b'"choices":[{"index":0,"delta":{"content":"' + text + b'"},"logprobs":null,"finish_reason":null' + tail


def cmpl_chunk(text: bytes, tail: bytes = b',"prompt_token_ids":null,"token_ids":null}]}') -> bytes:
    return CMPL + b'"choices":[{"index":0,"text":"' + text + b'","logprobs":null,"finish_reason":null,"stop_reason":null' + tail


def chat(model: str = "tiny") -> ChatStreamTranslator:
    return ChatStreamTranslator(model, arrival_ns=0)


def generate(context: bool = False) -> GenerateStreamTranslator:
    return GenerateStreamTranslator("tiny", arrival_ns=0, context=context)


def general(translator: StreamTranslator, event: bytes) -> bytes:
    return b"".join(orjson.dumps(o, option=orjson.OPT_APPEND_NEWLINE) for o in translator.feed(event, T, 5))


def state(t: StreamTranslator) -> tuple[Any, ...]:
    return (t.first_ns, t.finish_reason, t.usage, t.prompt_ids, t.output_ids, t.output_text)


@pytest.mark.parametrize(
    ("make", "event"),
    [
        pytest.param(chat, chat_chunk(b" sub"), id="chat-vllm-0.32"),
        pytest.param(chat, chat_chunk(b" Gr\xc3\xbc\xc3\x9fe \xe6\x9d\xb1\xe4\xba\xac"), id="chat-non-ascii"),
        pytest.param(chat, chat_chunk(b"x", b"}]}"), id="chat-without-token-ids"),
        pytest.param(chat, chat_chunk(b"x", b',"token_ids":null}],"usage":null}'), id="chat-usage-null"),
        pytest.param(lambda: chat('we"ird'), chat_chunk(b"x"), id="model-name-that-json-escapes"),
        pytest.param(chat, chat_chunk(b'say \\"hi\\" \\\\ \\b\\f\\n\\r\\t'), id="escapes-orjson-writes-alike"),
        pytest.param(chat, chat_chunk(b"\x7f \xe2\x80\xa8"), id="del-and-line-separator-raw"),
        pytest.param(generate, cmpl_chunk(b"Implemented"), id="completion-vllm-0.32"),
        pytest.param(generate, cmpl_chunk(b"x", b"}]}"), id="completion-without-ids"),
        pytest.param(generate, chat_chunk(b" templated"), id="templated-generate-over-chat"),
        pytest.param(lambda: generate(context=True), cmpl_chunk(b" kept for tokenize"), id="generate-context-keeps-text"),
        pytest.param(lambda: generate(context=True), cmpl_chunk(b'a\\nb \\"q\\"'), id="generate-context-keeps-decoded-text"),
    ],
)
def test_text_chunk_line_equals_the_parsing_path(make: Any, event: bytes) -> None:
    fast, slow = make(), make()
    line = fast.line(event, T, 5)
    assert line is not None
    assert line == general(slow, event)
    assert state(fast) == state(slow)
    again = fast.line(event, T, 5)  # the next chunk of the stream: checked by the framing the first one had
    assert again == general(slow, event) == line
    assert state(fast) == state(slow)


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(chat_chunk(b""), id="empty-text"),
        pytest.param(chat_chunk(b"a\\/b"), id="escaped-slash-orjson-writes-raw"),
        pytest.param(chat_chunk(b"caf\\u00e9"), id="unicode-escape-orjson-writes-raw"),
        pytest.param(chat_chunk(b"a\x01b"), id="raw-control-character"),
        pytest.param(chat_chunk(b"x", b',"token_ids":[5]}]}'), id="token-ids"),
        pytest.param(chat_chunk(b"x").replace(b'"finish_reason":null', b'"finish_reason":"stop"'), id="finish-reason"),
        pytest.param(chat_chunk(b"x").replace(b'"logprobs":null', b'"logprobs":{"content":[]}'), id="logprobs"),
        pytest.param(ID + b'"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}', id="role-chunk"),
        pytest.param(b'{"error":{"message":"boom"}}', id="error-event"),
        pytest.param(chat_chunk(b"x") + b" ", id="trailing-bytes"),
    ],
)
@pytest.mark.parametrize("after_text", [False, True], ids=["first-event", "after-a-text-chunk"])
def test_other_events_are_left_to_feed(event: bytes, after_text: bool) -> None:
    t = chat()
    if after_text:
        assert t.line(chat_chunk(b"x"), T, 5) is not None
    assert t.line(event, T, 5) is None


def test_after_a_text_chunk_one_of_other_framing_is_matched_in_full() -> None:
    t = chat()
    assert t.line(chat_chunk(b"a"), T, 5) is not None
    other = chat_chunk(b"b").replace(b"chatcmpl-a245c66370327a23", b"chatcmpl-other")
    assert t.line(other, T, 5) == general(chat(), other)
    assert t.line(chat_chunk(b"c"), T, 5) == general(chat(), chat_chunk(b"c"))


def test_an_event_where_the_remembered_framing_overlaps_is_left_to_feed() -> None:
    t = chat()
    first = chat_chunk(b"x")
    assert t.line(first, T, 5) is not None
    at = first.index(b'"x"')
    overlapped = first[: at + 1] + first[at + 3 :]  # starts with the prefix and ends with the suffix, sharing a quote
    assert t.line(overlapped, T, 5) is None


def test_invalid_utf8_is_left_to_feed_which_reports_it() -> None:
    event = chat_chunk(b"\xff\xfe")
    assert chat().line(event, T, 5) is None
    with pytest.raises(BackendError, match="unreadable stream event"):
        chat().feed(event, T, 5)


def test_a_translator_without_a_text_line_parses_everything() -> None:
    assert StreamTranslator("tiny", arrival_ns=0).line(chat_chunk(b"x"), T, 5) is None


def test_first_chunk_time_and_created_at_follow_each_line() -> None:
    t = chat()
    assert t.line(chat_chunk(b"a"), T, 5) is not None
    later = "2026-01-01T00:00:01.000000000Z"
    second = t.line(chat_chunk(b"b"), later, 9)
    assert t.first_ns == 5  # the first text chunk, not the last
    assert second == b'{"model":"tiny","created_at":"%b","message":{"role":"assistant","content":"b"},"done":false}\n' % (
        later.encode()
    )


def test_context_with_prompt_ids_keeps_no_text() -> None:
    t = generate(context=True)
    t.prompt_ids = [1, 2]
    assert t.line(cmpl_chunk(b"x"), T, 5) is not None
    assert t.output_text == []
