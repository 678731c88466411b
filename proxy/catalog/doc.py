"""docs/catalog.md, generated from catalog.yaml (``python -m proxy.catalog.doc > docs/catalog.md``;
tests/unit/test_catalog_doc.py keeps the two in sync)."""

from __future__ import annotations

from proxy import catalog

_HEAD = """# Catalog coverage

Ollama library names the proxy maps to Hugging Face repositories (generated from
[`proxy/catalog/catalog.yaml`](../proxy/catalog/catalog.yaml); add or override entries
under `catalog:` in `config.yaml`). With managed models on, `ollama pull NAME` downloads
the repository into the Hugging Face cache and `ollama run NAME` starts vLLM with the
parsers below. Memory is the weights at vLLM's default 16-bit dtype (2 bytes per
parameter); the KV cache comes on top. ⚿ = gated: accept the licence on the model card
and set `HF_TOKEN`.

| Ollama name | Also | Hugging Face repository | Tool parser | Reasoning parser | Context | Weights (GB) | Quantized | Notes |
|---|---|---|---|---|---|---|---|---|
"""


def render(entries: tuple[catalog.Entry, ...]) -> str:
    rows = []
    for e in entries:
        quantized = ", ".join(f"[{kind.upper()}](https://huggingface.co/{repo})" for kind, repo in e.quantized.items())
        said = ("takes images (vision)" if e.vision else "", e.notes or ("embedding model" if e.kind == "embedding" else ""))
        notes = "; ".join(n for n in said if n).replace("|", "\\|")
        cells = [f"`{e.name}`", ", ".join(f"`{a}`" for a in e.aliases), f"[{e.repo}]({e.source}){' ⚿' if e.gated else ''}",
                 e.tool_parser or "—", e.reasoning_parser or "—", str(e.context_length or "—"),
                 "—" if e.gpu_memory_gb is None else f"{e.gpu_memory_gb:g}", quantized or "—", notes]  # fmt: skip
        rows.append("| " + " | ".join(cells) + " |")
    return _HEAD + "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(render(catalog.builtin()), end="")
