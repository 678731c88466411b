"""The options table: one row per Ollama option."""

from __future__ import annotations

import typing

import ollama
import pytest

from proxy.errors import BadRequest
from proxy.translate.options import DROPPED, MAPPED, to_openai_params


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param({"num_predict": 64}, {"max_tokens": 64}, id="num_predict → max_tokens"),
        pytest.param({"num_predict": -1}, {}, id="num_predict -1 (unlimited) is left out"),
        pytest.param({"num_predict": -2}, {}, id="num_predict -2 (fill context) is left out"),
        pytest.param({"num_predict": 12.0}, {"max_tokens": 12}, id="integer option accepts a whole float"),
        pytest.param({"temperature": 0}, {"temperature": 0.0}, id="temperature passes through as float"),
        pytest.param({"top_k": 40}, {"top_k": 40}, id="top_k passes through"),
        pytest.param({"top_k": 0}, {"top_k": -1}, id="top_k 0 (off) becomes vLLM's -1"),
        pytest.param({"top_p": 0.9, "min_p": 0.05}, {"top_p": 0.9, "min_p": 0.05}, id="top_p and min_p pass through"),
        pytest.param({"seed": 42}, {"seed": 42}, id="seed passes through"),
        pytest.param({"seed": -1}, {}, id="seed -1 (random) is left out"),
        pytest.param({"stop": ["\n", "User:"]}, {"stop": ["\n", "User:"]}, id="stop passes through"),
        pytest.param({"stop": ["a", "a", "b"]}, {"stop": ["a", "b"]}, id="duplicate stop strings are dropped"),
        pytest.param({"stop": "END"}, {"stop": ["END"]}, id="a single stop string becomes a list"),
        pytest.param({"repeat_penalty": 1.1}, {"repetition_penalty": 1.1}, id="repeat_penalty → repetition_penalty"),
        pytest.param(
            {"presence_penalty": 0.5, "frequency_penalty": 0.2},
            {"presence_penalty": 0.5, "frequency_penalty": 0.2},
            id="presence and frequency penalties keep their names",
        ),  # fmt: skip
        pytest.param({"num_ctx": 8192, "mirostat": 1, "numa": True}, {}, id="load-time and removed options are dropped"),
        pytest.param({"temperature": None}, {}, id="null means unset"),
    ],
)
def test_options_mapping(options: dict[str, object], expected: dict[str, object]) -> None:
    params, _ = to_openai_params(options)
    assert params == expected


def test_dropped_keys_are_reported() -> None:
    _, dropped = to_openai_params({"num_ctx": 4096, "temperature": 0.1, "made_up": 1})
    assert dropped == ["num_ctx", "made_up"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"temperature": "hot"}, 'option "temperature" must be of type float32', id="string temperature"),
        pytest.param({"num_predict": "ten"}, 'option "num_predict" must be of type int', id="string num_predict"),
        pytest.param({"stop": [1]}, 'option "stop" must be of type []string', id="non-string stop item"),
        pytest.param({"seed": True}, 'option "seed" must be of type int', id="bool seed"),
    ],
)
def test_options_with_wrong_types_are_400(options: dict[str, object], message: str) -> None:
    with pytest.raises(BadRequest, match=message.replace("[", r"\[").replace("]", r"\]")):
        to_openai_params(options)


def test_every_option_of_the_official_client_has_a_row() -> None:
    """A key the client can send must be mapped or dropped with a reason: walking the
    client's own ``Options`` type keeps a new key from slipping by."""
    client_keys = set(typing.get_type_hints(ollama.Options))
    table = set(MAPPED) | set(DROPPED)
    assert client_keys - table == set()
    assert all(reason.strip() for reason in DROPPED.values())
