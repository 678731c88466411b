"""The per-family vLLM defaults for managed models, and how config overrides them."""

from __future__ import annotations

import pytest

from proxy.managed import families


@pytest.mark.parametrize(
    ("model", "args", "capabilities"),
    [
        pytest.param(
            "Qwen/Qwen3-8B",
            ("--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--reasoning-parser", "qwen3"),
            ("completion", "tools", "thinking"),
            id="qwen3",
        ),  # fmt: skip
        pytest.param(
            "Qwen/Qwen3-Coder-30B-A3B-Instruct",
            ("--enable-auto-tool-choice", "--tool-call-parser", "qwen3_coder"),
            ("completion", "tools"),
            id="qwen3-coder before qwen3",
        ),  # fmt: skip
        pytest.param(
            "Qwen/Qwen2.5-7B-Instruct",
            ("--enable-auto-tool-choice", "--tool-call-parser", "hermes"),
            ("completion", "tools"),
            id="qwen2.5",
        ),  # fmt: skip
        pytest.param(
            "meta-llama/Llama-3.1-8B-Instruct",
            ("--enable-auto-tool-choice", "--tool-call-parser", "llama3_json"),
            ("completion", "tools"),
            id="llama 3.1",
        ),  # fmt: skip
        pytest.param(
            "mistralai/Mistral-7B-Instruct-v0.3",
            ("--enable-auto-tool-choice", "--tool-call-parser", "mistral"),
            ("completion", "tools"),
            id="mistral",
        ),  # fmt: skip
        pytest.param(
            "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
            ("--reasoning-parser", "deepseek_r1"),
            ("completion", "thinking"),
            id="deepseek-r1 distill",
        ),  # fmt: skip
        pytest.param(
            "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B",
            ("--reasoning-parser", "deepseek_r1"),
            ("completion", "thinking"),
            id="deepseek-r1 on qwen3 is still r1",
        ),  # fmt: skip
        pytest.param("/models/tiny-llama", (), ("completion",), id="unknown: nothing added"),
    ],
)
def test_family_table(model: str, args: tuple[str, ...], capabilities: tuple[str, ...]) -> None:
    family = families.lookup(model)
    found = family.args if family else ()
    assert found == args
    assert families.capabilities(found) == capabilities


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        pytest.param(
            (), ("--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--reasoning-parser", "qwen3"), id="no user args"
        ),  # fmt: skip
        pytest.param(
            ("--tool-call-parser=qwen3_xml",),
            ("--enable-auto-tool-choice", "--reasoning-parser", "qwen3", "--tool-call-parser=qwen3_xml"),
            id="flag=value form replaces the default",
        ),  # fmt: skip
        pytest.param(
            ("--reasoning-parser", "deepseek_r1", "--dtype", "float32"),
            (
                "--enable-auto-tool-choice",
                "--tool-call-parser",
                "hermes",
                "--reasoning-parser",
                "deepseek_r1",
                "--dtype",
                "float32",
            ),
            id="value form replaces, others kept",
        ),  # fmt: skip
    ],
)
def test_user_args_override_the_table(user: tuple[str, ...], expected: tuple[str, ...]) -> None:
    qwen3 = families.lookup("Qwen/Qwen3-8B")
    assert qwen3 is not None
    assert families.merge(qwen3.args, user) == expected


def test_pooling_args_mean_an_embedding_model() -> None:
    assert families.capabilities(("--runner", "pooling")) == ("embedding",)
