"""Per-family vLLM defaults for managed models: the flags a user would otherwise have to
know to get tools and thinking working (vLLM's docs/features/tool_calling.md and
docs/features/reasoning_outputs.md list the parser names).

The first row whose pattern occurs in the lower-cased model id or path wins. A model's
own ``launch.args`` (and ``--vllm-args``) override any flag here with the same name, and
``launch.family_defaults: false`` turns the table off for one model.
"""

from __future__ import annotations

from typing import NamedTuple


class Family(NamedTuple):
    pattern: str  # substring of the lower-cased model id or path
    args: tuple[str, ...]  # vLLM flags added before the user's own
    capabilities: tuple[str, ...]  # what those flags enable, for /api/show and /api/tags


_TOOLS = ("--enable-auto-tool-choice", "--tool-call-parser")
_SWITCHES = {"--enable-auto-tool-choice"}  # flags in this table that take no value

FAMILIES: tuple[Family, ...] = (
    # DeepSeek-R1 (and its Qwen/Llama distills, even on Qwen3): <think> reasoning, no tool calling.
    Family("deepseek-r1", ("--reasoning-parser", "deepseek_r1"), ("completion", "thinking")),
    # Qwen3-Coder emits XML-ish tool calls with its own parser.
    Family("qwen3-coder", (*_TOOLS, "qwen3_coder"), ("completion", "tools")),
    # Qwen3 uses Hermes-style <tool_call> tags and <think> reasoning (on by default).
    Family("qwen3", (*_TOOLS, "hermes", "--reasoning-parser", "qwen3"), ("completion", "tools", "thinking")),
    Family("qwq", (*_TOOLS, "hermes", "--reasoning-parser", "deepseek_r1"), ("completion", "tools", "thinking")),
    Family("qwen2.5", (*_TOOLS, "hermes"), ("completion", "tools")),
    Family("llama-3", (*_TOOLS, "llama3_json"), ("completion", "tools")),
    Family("llama3", (*_TOOLS, "llama3_json"), ("completion", "tools")),
    # Mistral and Mixtral (their repos live under mistralai/).
    Family("mistral", (*_TOOLS, "mistral"), ("completion", "tools")),
    Family("mixtral", (*_TOOLS, "mistral"), ("completion", "tools")),
    # Phi-4-mini has its own JSON tool format; Phi-3 and Phi-4 (14B) call no tools.
    Family("phi-4-mini", (*_TOOLS, "phi4_mini_json"), ("completion", "tools")),
    Family("phi-", (), ("completion",)),
    # Gemma 2 and 3: vLLM has no tool-call parser for them (vllm/tool_parsers/ in 0.32).
    Family("gemma", (), ("completion",)),
    Family("gpt-oss", (*_TOOLS, "openai", "--reasoning-parser", "openai_gptoss"), ("completion", "tools", "thinking")),
    Family("granite", (*_TOOLS, "granite"), ("completion", "tools")),
)

# Flags that make vLLM a pooling (embedding) server instead of a generative one.
_POOLING = (("--runner", "pooling"), ("--task", "embed"), ("--convert", "embed"))


def lookup(model: str) -> Family | None:
    text = model.lower()
    return next((f for f in FAMILIES if f.pattern in text), None)


def merge(defaults: tuple[str, ...], user: tuple[str, ...]) -> tuple[str, ...]:
    """``defaults`` then ``user``, dropping each default flag (with its value) that the
    user's arguments also set, so config always wins."""
    given = {a.split("=", 1)[0] for a in user if a.startswith("--")}
    kept: list[str] = []
    i = 0
    while i < len(defaults):
        flag = defaults[i]
        width = 1 if flag in _SWITCHES or "=" in flag else 2
        if flag.split("=", 1)[0] not in given:
            kept += defaults[i : i + width]
        i += width
    return (*kept, *user)


def capabilities(args: tuple[str, ...]) -> tuple[str, ...]:
    """What a vLLM server started with ``args`` can do, for listings before it runs."""
    pairs = set(zip(args, args[1:], strict=False)) | {tuple(a.split("=", 1)) for a in args if "=" in a}
    if any(p in pairs for p in _POOLING):
        return ("embedding",)
    caps = ["completion"]
    if "--tool-call-parser" in {a.split("=", 1)[0] for a in args}:
        caps.append("tools")
    if "--reasoning-parser" in {a.split("=", 1)[0] for a in args}:
        caps.append("thinking")
    return tuple(caps)
