"""Stream translation: vLLM chunks in, Ollama objects out (pure, clock passed in)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.errors import BackendError
from proxy.translate.chat import ChatStreamTranslator
from proxy.translate.generate import GenerateStreamTranslator
from proxy.translate.stream import fold

T = "2026-01-01T00:00:00.000000000Z"


def ev(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj)


def delta(**d: Any) -> bytes:
    return ev({"choices": [{"index": 0, "delta": d, "finish_reason": None}]})


def finish(reason: str, **d: Any) -> bytes:
    return ev({"choices": [{"index": 0, "delta": d, "finish_reason": reason, "stop_reason": None}]})


USAGE = ev({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})


def run(translator: Any, events: list[bytes]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    translator.sent_ns = 1_000
    out = []
    now = 2_000
    for e in events:
        now += 1_000
        out += translator.feed(e, T, now)
    return out, translator.finish(T, now + 1_000)


def chat() -> ChatStreamTranslator:
    return ChatStreamTranslator("Tiny", arrival_ns=0)


def test_role_only_first_chunk_emits_nothing() -> None:
    out, _ = run(chat(), [delta(role="assistant", content=""), delta(content="Hi"), finish("stop"), USAGE])
    assert out == [{"model": "Tiny", "created_at": T, "message": {"role": "assistant", "content": "Hi"}, "done": False}]


def test_final_object_has_counts_and_integer_durations() -> None:
    _, final = run(chat(), [delta(role="assistant", content=""), delta(content="a"), delta(content="b"), finish("stop"), USAGE])
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["prompt_eval_count"] == 7 and final["eval_count"] == 3
    # arrival 0, sent 1000, first chunk at 3000, end at 8000
    assert final["total_duration"] == 8_000
    assert final["load_duration"] == 1_000
    assert final["prompt_eval_duration"] == 2_000
    assert final["eval_duration"] == 5_000
    assert all(isinstance(final[k], int) for k in final if k.endswith("duration"))


@pytest.mark.parametrize(
    ("reason", "done_reason"),
    [
        pytest.param("stop", "stop", id="stop"),
        pytest.param("length", "length", id="length stop"),
        pytest.param("tool_calls", "stop", id="tool_calls reports stop like native Ollama"),
        pytest.param("repetition", "stop", id="repetition detection ends as a stop"),
    ],
)
def test_done_reason(reason: str, done_reason: str) -> None:
    _, final = run(chat(), [delta(content="x"), finish(reason)])
    assert final["done_reason"] == done_reason


def test_usage_missing_means_counts_left_out_not_invented() -> None:
    _, final = run(chat(), [delta(content="x"), finish("stop")])
    assert "eval_count" not in final and "prompt_eval_count" not in final
    assert final["eval_duration"] > 0


def test_empty_completion() -> None:
    out, final = run(chat(), [delta(role="assistant", content=""), finish("stop"), USAGE])
    assert out == []
    assert final["message"]["content"] == "" and final["done"] is True


def test_text_in_the_finish_chunk_is_kept() -> None:
    out, _ = run(chat(), [finish("length", content="last")])
    assert [o["message"]["content"] for o in out] == ["last"]


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_reasoning_becomes_thinking(field: str) -> None:
    out, final = run(chat(), [delta(**{field: "hmm"}), delta(content="ok"), finish("stop")])
    assert out[0]["message"] == {"role": "assistant", "content": "", "thinking": "hmm"}
    folded = fold(out, final, "message")
    assert folded["message"]["thinking"] == "hmm" and folded["message"]["content"] == "ok"


def test_tool_call_arguments_split_over_chunks_arrive_whole_in_the_final_object() -> None:
    head = {"index": 0, "id": "chatcmpl-tool-1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    pieces = ['{"ci', 'ty": "To', 'kyo"}']
    events = [delta(tool_calls=[head])]
    events += [delta(tool_calls=[{"index": 0, "id": None, "type": None, "function": {"arguments": p}}]) for p in pieces]
    second = {"index": 1, "id": "chatcmpl-tool-2", "function": {"name": "now", "arguments": "{}"}}
    events += [delta(tool_calls=[second]), finish("tool_calls")]
    out, final = run(chat(), events)
    assert out == []
    assert final["message"]["tool_calls"] == [
        {"id": "chatcmpl-tool-1", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Tokyo"}}},
        {"id": "chatcmpl-tool-2", "function": {"index": 1, "name": "now", "arguments": {}}},
    ]
    assert final["done_reason"] == "stop"


def test_invalid_tool_call_json_is_an_error_not_a_string() -> None:
    bad = {"index": 0, "id": "t", "function": {"name": "f", "arguments": '{"a": '}}
    with pytest.raises(BackendError, match="not a JSON object"):
        run(chat(), [delta(tool_calls=[bad]), finish("tool_calls")])


@pytest.mark.parametrize(
    "error",
    [
        pytest.param({"error": {"message": "boom", "type": "InternalServerError", "code": 500}}, id="nested (0.10+)"),
        pytest.param({"object": "error", "message": "boom", "type": "InternalServerError", "code": 500}, id="flat (<=0.9)"),
    ],
)
def test_mid_stream_error_event_raises(error: dict[str, Any]) -> None:
    translator = chat()
    translator.feed(delta(content="x"), T, 1)
    with pytest.raises(BackendError, match="boom"):
        translator.feed(ev(error), T, 2)


@pytest.mark.parametrize(
    ("events", "message"),
    [
        pytest.param([delta(content="x")], "ended before the reply was complete", id="no finish chunk"),
        pytest.param([delta(content="x"), finish("abort")], "ended the request", id="aborted by the engine"),
    ],
)
def test_incomplete_streams_are_errors(events: list[bytes], message: str) -> None:
    with pytest.raises(BackendError, match=message):
        run(chat(), events)


def test_generate_completions_text_chunks() -> None:
    translator = GenerateStreamTranslator("tiny", arrival_ns=0)
    events = [ev({"choices": [{"index": 0, "text": t, "finish_reason": None}]}) for t in ("def", " f")]
    events += [ev({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}), USAGE]
    out, final = run(translator, events)
    assert [o["response"] for o in out] == ["def", " f"]
    assert all(o["done"] is False and o["model"] == "tiny" for o in out)
    assert final["response"] == "" and final["done_reason"] == "length"
    assert fold(out, final, "")["response"] == "def f"


def test_fold_keeps_metrics_and_concatenates() -> None:
    out, final = run(chat(), [delta(content="Hel"), delta(content="lo"), finish("stop"), USAGE])
    folded = fold(out, final, "message")
    assert folded["message"]["content"] == "Hello"
    assert folded["done"] is True and folded["eval_count"] == 3


def test_logprobs_ride_on_their_chunk_sorted_and_fold_at_top_level() -> None:
    logprobs = {
        "content": [
            {
                "token": "Hi",
                "logprob": -0.5,
                "bytes": [72, 105],
                "top_logprobs": [
                    {"token": "Hi", "logprob": -0.5, "bytes": [72, 105]},
                    {"token": "Yo", "logprob": -0.1, "bytes": [89, 111]},
                ],
            }
        ]
    }
    event = ev({"choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": logprobs, "finish_reason": None}]})
    out, final = run(chat(), [event, finish("stop")])
    expected = [
        {
            "token": "Hi",
            "logprob": -0.5,
            "bytes": [72, 105],
            "top_logprobs": [
                {"token": "Yo", "logprob": -0.1, "bytes": [89, 111]},
                {"token": "Hi", "logprob": -0.5, "bytes": [72, 105]},
            ],
        }
    ]
    assert out[0]["logprobs"] == expected
    assert fold(out, final, "message")["logprobs"] == expected
    assert "logprobs" not in fold(out, final, "message")["message"]


def test_completions_logprobs_shape() -> None:
    logprobs = {"tokens": ["a"], "token_logprobs": [-1.0], "top_logprobs": [{"a": -1.0, "b": -0.2}], "text_offset": [0]}
    event = ev({"choices": [{"index": 0, "text": "a", "logprobs": logprobs, "finish_reason": None}]})
    out, _ = run(GenerateStreamTranslator("tiny", 0), [event, finish("stop")])
    assert out[0]["logprobs"] == [
        {
            "token": "a",
            "logprob": -1.0,
            "bytes": [97],
            "top_logprobs": [{"token": "b", "logprob": -0.2, "bytes": [98]}, {"token": "a", "logprob": -1.0, "bytes": [97]}],
        }
    ]


def test_generate_context_is_prompt_ids_then_output_ids() -> None:
    translator = GenerateStreamTranslator("tiny", 0, context=True)
    first = ev({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}], "prompt_token_ids": [1, 2]})
    tokens = [ev({"choices": [{"index": 0, "delta": {"content": t}, "token_ids": [i]}]}) for i, t in ((7, "a"), (8, "b"))]
    _, final = run(translator, [first, *tokens, finish("stop")])
    assert final["context"] == [1, 2, 7, 8]


def test_without_token_ids_context_is_an_empty_list_and_the_text_is_kept_for_tokenize() -> None:
    translator = GenerateStreamTranslator("tiny", 0, context=True)
    _, final = run(translator, [delta(content="x"), delta(content="y"), finish("stop")])
    assert final["context"] == []
    assert translator.missing_context and translator.output_text == ["x", "y"]


def test_context_set_from_tokenize_replaces_the_missing_ids() -> None:
    translator = GenerateStreamTranslator("tiny", 0, context=True)
    translator.feed(delta(content="x"), T, 1)
    translator.feed(finish("stop"), T, 2)
    translator.set_context([5, 6, 7])
    assert not translator.missing_context and translator.finish(T, 3)["context"] == [5, 6, 7]


def test_raw_generate_has_no_context() -> None:
    _, final = run(GenerateStreamTranslator("tiny", 0), [delta(content="x"), finish("stop")])
    assert "context" not in final


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(b"[1,2]", id="a list"),
        pytest.param(b"null", id="null"),
        pytest.param(ev({"choices": {"index": 0}}), id="choices an object"),
        pytest.param(ev({"choices": 3}), id="choices a number"),
        pytest.param(ev({"choices": [{"delta": "x"}]}), id="delta a string"),
        pytest.param(ev({"choices": [{"delta": {"reasoning": 1}}]}), id="reasoning a number"),
        pytest.param(ev({"choices": [{"delta": {"tool_calls": [{"id": 3}]}}]}), id="tool call id a number"),
        pytest.param(ev({"choices": [{"delta": {"tool_calls": [{"function": {"arguments": 4}}]}}]}), id="arguments a number"),
        pytest.param(ev({"choices": [{"delta": {}, "token_ids": [1, "2"]}]}), id="token ids not integers"),
        pytest.param(ev({"choices": [], "usage": ["x"]}), id="usage a list"),
        pytest.param(ev({"choices": [], "usage": {"completion_tokens": True}}), id="usage count a bool"),
    ],
)
def test_wrong_shapes_are_a_backend_protocol_error(event: bytes) -> None:
    with pytest.raises(BackendError, match="unexpected shape") as info:
        chat().feed(event, T, 1)
    assert info.value.status == 502


def test_unreadable_event_is_a_backend_protocol_error() -> None:
    with pytest.raises(BackendError, match="unreadable stream event") as info:
        chat().feed(b"{nope", T, 1)
    assert info.value.status == 502


def test_the_base_translator_leaves_the_object_shapes_to_subclasses() -> None:
    from proxy.translate.stream import StreamTranslator

    with pytest.raises(NotImplementedError):
        StreamTranslator("x", 0).chunk(T, "a", "")
    with pytest.raises(NotImplementedError):
        StreamTranslator("x", 0).final(T, [])


def test_object_arguments_and_a_call_without_id() -> None:
    call = {"index": 0, "function": {"name": "f", "arguments": {"a": 1}}}
    _, final = run(chat(), [delta(tool_calls=[call]), finish("tool_calls")])
    assert final["message"]["tool_calls"] == [{"function": {"index": 0, "name": "f", "arguments": {"a": 1}}}]


def test_usage_with_only_a_completion_count() -> None:
    _, final = run(chat(), [delta(content="x"), finish("stop"), ev({"choices": [], "usage": {"completion_tokens": 1}})])
    assert final["eval_count"] == 1 and "prompt_eval_count" not in final


def test_logprobs_without_alternatives() -> None:
    chat_lp = {"content": [{"token": "a", "logprob": -1.0}]}
    out, _ = run(chat(), [ev({"choices": [{"index": 0, "delta": {"content": "a"}, "logprobs": chat_lp}]}), finish("stop")])
    assert out[0]["logprobs"] == [{"token": "a", "logprob": -1.0, "bytes": [97]}]
    raw_lp = {"tokens": ["a"], "token_logprobs": [None], "top_logprobs": [None]}
    raw_event = ev({"choices": [{"index": 0, "text": "a", "logprobs": raw_lp}]})
    out, _ = run(GenerateStreamTranslator("tiny", 0), [raw_event, finish("stop")])
    assert out[0]["logprobs"] == [{"token": "a", "logprob": -9999.0, "bytes": [97]}]


def test_completions_context_comes_from_the_choice_and_usage_may_lack_the_output_count() -> None:
    translator = GenerateStreamTranslator("tiny", 0, context=True)
    first = ev({"choices": [{"index": 0, "text": "a", "prompt_token_ids": [1], "token_ids": [5]}]})
    _, final = run(translator, [first, finish("stop"), ev({"choices": [], "usage": {"prompt_tokens": 2}})])
    assert final["context"] == [1, 5] and final["prompt_eval_count"] == 2 and "eval_count" not in final
