"""A model's default system prompt (config `system`, from a Modelfile's SYSTEM), applied
as Ollama applies it: only when the request brings no system prompt of its own."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.translate.chat import to_openai_chat_request
from proxy.translate.common import with_system
from proxy.translate.generate import to_openai_generate_request
from proxy.translate.models import ModelFacts, to_ollama_show

USER = {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("messages", "sent"),
    [
        pytest.param([USER], [{"role": "system", "content": "Be brief."}, USER], id="no system message: prepended"),
        pytest.param([{"role": "system", "content": "Mine."}, USER], [{"role": "system", "content": "Mine."}, USER],
                     id="the request's own system message wins"),
        pytest.param([{"role": "SYSTEM", "content": "Mine."}, USER], [{"role": "system", "content": "Mine."}, USER],
                     id="roles are case-insensitive"),
        pytest.param([USER, {"role": "system", "content": "Late."}],
                     [{"role": "system", "content": "Be brief."}, USER, {"role": "system", "content": "Late."}],
                     id="only a first system message counts, as in Ollama"),
    ],
)  # fmt: skip
def test_chat_gets_the_default_system_prompt(messages: list[dict[str, Any]], sent: list[dict[str, Any]]) -> None:
    body = to_openai_chat_request(with_system({"model": "m", "messages": messages}, "Be brief."), "m", {}).body
    assert [{k: m[k] for k in ("role", "content")} for m in body["messages"]] == sent


@pytest.mark.parametrize(
    ("request_", "system"),
    [
        pytest.param({"prompt": "hi"}, "Be brief.", id="no system: the default"),
        pytest.param({"prompt": "hi", "system": "Mine."}, "Mine.", id="the request's system wins"),
    ],
)
def test_generate_gets_the_default_system_prompt(request_: dict[str, Any], system: str) -> None:
    path, translated = to_openai_generate_request(with_system({"model": "m", **request_}, "Be brief."), "m", {}, 4096)
    assert path == "/v1/chat/completions" and translated.body["messages"][0] == {"role": "system", "content": system}


def test_raw_generate_and_no_default_leave_the_request_alone() -> None:
    raw = {"model": "m", "prompt": "hi", "raw": True}
    assert with_system(raw, "Be brief.") is raw
    path, _ = to_openai_generate_request(with_system(raw, "Be brief."), "m", {}, 4096)
    assert path == "/v1/completions"
    plain = {"model": "m", "messages": [USER]}
    assert with_system(plain, "") is plain
    assert with_system({"model": "m", "messages": []}, "S")["messages"] == [{"role": "system", "content": "S"}]


def test_show_reports_the_system_prompt() -> None:
    facts = ModelFacts("m:latest", "managed:x", "m:latest", "org/x", None, ("completion",), None, "", "", 0, 0, {},
                       system="Be brief.")  # fmt: skip
    shown = to_ollama_show(facts, "m")
    assert shown["system"] == "Be brief." and shown["modelfile"].endswith('SYSTEM """Be brief."""\n')
    assert "system" not in to_ollama_show(facts._replace(system=""), "m")
