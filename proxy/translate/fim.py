"""Fill-in-the-middle prompts for Ollama's ``suffix`` on generate.

vLLM supports ``suffix`` only for the few renderers that define FIM (vLLM 0.32, vllm/entrypoints/openai/protocol.py), so
the proxy builds the model family's own FIM prompt and sends it raw to
``/v1/completions``. A family is configured per model (``fim:``) or recognised from the
served name; models with neither report no ``insert`` capability and get Ollama's
``does not support insert``.
"""

from __future__ import annotations

TEMPLATES = {
    "qwen": "<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>",  # Qwen2.5-Coder, Qwen3-Coder
    "starcoder": "<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>",  # StarCoder 1/2, SantaCoder
    "codellama": "<PRE> {prefix} <SUF>{suffix} <MID>",  # Code Llama
    "deepseek": "<｜fim▁begin｜>{prefix}<｜fim▁hole｜>{suffix}<｜fim▁end｜>",  # DeepSeek-Coder
    "codestral": "[SUFFIX]{suffix}[PREFIX]{prefix}",  # Codestral
}

# Substrings of served names / model paths that identify a FIM-trained family.
_RECOGNISED = (
    ("qwen2.5-coder", "qwen"),
    ("qwen3-coder", "qwen"),
    ("starcoder", "starcoder"),
    ("codellama", "codellama"),
    ("code-llama", "codellama"),
    ("deepseek-coder", "deepseek"),
    ("codestral", "codestral"),
)


def recognise(*names: str) -> str | None:
    text = " ".join(names).lower()
    return next((family for needle, family in _RECOGNISED if needle in text), None)


def to_fim_prompt(family: str, prefix: str, suffix: str) -> str:
    return TEMPLATES[family].format(prefix=prefix, suffix=suffix)
