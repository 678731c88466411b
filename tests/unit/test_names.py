"""Ollama name matching (Ollama's types/model/name.go)."""

from __future__ import annotations

import pytest

from proxy import names


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        pytest.param("llama3", "llama3:latest", True, id="missing tag means latest"),
        pytest.param("llama3", "library/llama3:latest", True, id="library namespace is the default"),
        pytest.param("llama3", "registry.ollama.ai/library/llama3:latest", True, id="default host"),
        pytest.param("Llama3:LATEST", "llama3", True, id="case-insensitive"),
        pytest.param("llama3", "llama3:8b", False, id="tags must match"),
        pytest.param("qwen/qwen3-8b", "Qwen/Qwen3-8B:latest", True, id="namespaced names"),
        pytest.param("other/llama3", "llama3", False, id="namespace must match"),
    ],
)
def test_matching(a: str, b: str, same: bool) -> None:
    assert (names.key(a) == names.key(b)) is same


@pytest.mark.parametrize(
    ("name", "display"),
    [
        pytest.param("llama3", "llama3:latest", id="tag is always shown"),
        pytest.param("registry.ollama.ai/library/llama3:8b", "llama3:8b", id="defaults dropped"),
        pytest.param("hf.co/bartowski/foo:Q4_K_M", "hf.co/bartowski/foo:Q4_K_M", id="other host kept"),
        pytest.param("user/model:tag", "user/model:tag", id="namespace kept"),
    ],
)
def test_display(name: str, display: str) -> None:
    parsed = names.parse(name)
    assert parsed is not None and parsed.display() == display


@pytest.mark.parametrize("name", ["", "bad name", "a/b/c/d", ":tag", "x:", "-lead"])
def test_invalid(name: str) -> None:
    assert names.parse(name) is None


@pytest.mark.parametrize(
    ("served", "display"),
    [
        pytest.param("tiny", "tiny:latest", id="plain served name gets latest"),
        pytest.param("Qwen/Qwen3-8B", "qwen/qwen3-8b:latest", id="capitals and slash"),
        pytest.param("qwen3:8b", "qwen3:8b", id="served alias with a tag"),
        pytest.param("/models/My Model", "models/my-model:latest", id="filesystem path"),
        pytest.param(".cache/tiny-llama", "cache/tiny-llama:latest", id="dot-led directory"),
    ],
)
def test_from_served(served: str, display: str) -> None:
    name = names.from_served(served)
    assert name.display() == display
    assert names.parse(name.display()) is not None
