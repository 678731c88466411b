#!/usr/bin/env python3
"""Build a tiny, random-weight Llama chat model that vLLM can serve, with no network.

    .venv-vllm/bin/python scripts/make_tiny_model.py .cache/tiny-llama

Runs inside the vLLM venv (needs torch, transformers, tokenizers). Takes a few
seconds and is deterministic for a given CPython stdlib + library versions:
  * byte-level BPE tokenizer, vocab 2048, trained on the first 200 (sorted)
    top-level .py files of this interpreter's own stdlib;
  * special tokens <|endoftext|>, <|im_start|>, <|im_end|> (eos), <|pad|>;
  * ChatML chat template that also renders `tools` (Hermes/Qwen2.5 style, so
    vLLM's `--tool-call-parser hermes` fits), assistant `tool_calls` and role
    `tool` messages;
  * LlamaForCausalLM: 2 layers, hidden 128, FFN 256, 4 heads / 2 KV heads,
    tied embeddings (557,696 parameters), torch seed 0, safetensors.

If OUT_DIR already holds a complete model (marker file written last), nothing
is rebuilt. The model is built in a temp dir next to OUT_DIR and renamed into
place, so an interrupted build never looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

VOCAB_SIZE = 2048
N_TRAIN_FILES = 200
MAX_POSITIONS = 1024
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
MARKER = ".tiny-model-complete"
REQUIRED_FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]

# ChatML (Qwen2.5-like). vLLM detects that `content` is used as a string, so
# OpenAI content-part lists are flattened to text before rendering.
# Tool-call arguments may arrive as a JSON string or (after vLLM parses them)
# as a mapping; both are rendered as JSON.
CHAT_TEMPLATE = r"""{%- if tools %}
{{- '<|im_start|>system\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content + '\n\n' }}{%- endif %}
{{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}
{%- for tool in tools %}{{- '\n' + (tool | tojson) }}{%- endfor %}
{{- '\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'system' and loop.first %}
{%- elif message.role == 'assistant' %}
{{- '<|im_start|>assistant' }}
{%- if message.content %}{{- '\n' + message.content }}{%- endif %}
{%- for tc in message.tool_calls or [] %}
{%- set fn = tc.function if tc.function is defined else tc %}
{{- '\n<tool_call>\n{"name": "' + fn.name + '", "arguments": ' }}
{%- if fn.arguments is string %}{{- fn.arguments }}{%- else %}{{- fn.arguments | tojson }}{%- endif %}
{{- '}\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\n' }}
{%- elif message.role == 'tool' %}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\n<tool_response>\n' + (message.content or '') + '\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}
{%- else %}
{{- '<|im_start|>' + message.role + '\n' + (message.content or '') + '<|im_end|>\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}
"""


def is_complete(out: Path) -> bool:
    return (out / MARKER).is_file() and all((out / f).is_file() for f in REQUIRED_FILES)


def training_files() -> list[str]:
    """First N top-level .py files of this interpreter's stdlib, sorted by name."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    if not stdlib.is_dir():
        stdlib = Path(os.__file__).parent
    files = sorted(p for p in stdlib.glob("*.py") if p.is_file())[:N_TRAIN_FILES]
    if len(files) < 50:
        sys.exit(f"make_tiny_model: only {len(files)} stdlib .py files found in {stdlib}")
    return [str(p) for p in files]


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,  # ids 0..3, counted in VOCAB_SIZE
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train(training_files(), trainer)

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|pad|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )


def build_model(tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    model = LlamaForCausalLM(config).eval()
    return model


def main() -> int:
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    out = Path(sys.argv[1]).resolve()
    if is_complete(out):
        print(f"make_tiny_model: {out} already complete; skipping")
        return 0

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700
    try:
        tokenizer = build_tokenizer()
        model = build_model(tokenizer)
        tokenizer.save_pretrained(tmp)  # transformers 5 also writes chat_template.jinja
        model.save_pretrained(tmp, safe_serialization=True)
        # Also keep the template inside tokenizer_config.json for older loaders.
        cfg_path = tmp / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["chat_template"] = CHAT_TEMPLATE
        cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
        n_params = sum(p.numel() for p in model.parameters())
        (tmp / MARKER).write_text(f"vocab={len(tokenizer)} params={n_params}\n")
        if out.exists():
            shutil.rmtree(out)  # incomplete leftover
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"make_tiny_model: wrote {out} (vocab {len(tokenizer)}, {n_params:,} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
