"""``ollama-vllm-proxy migrate --from URL|PATH [--out PATH]``: a proxy config from an Ollama
install. Each Ollama model that maps to the catalog (by its library name, or by sharing
its weights with a library model that does) becomes a managed model, with the Modelfile's
PARAMETERs as ``options`` and its SYSTEM as ``system``; what cannot be mapped is listed
in the file as comments, with the reason. A summary and the next commands go to stderr.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import urlsplit

import yaml

from proxy import catalog
from proxy.migrate.sources import Found, SourceError, read

# Stop strings that are the chat template's own special tokens: vLLM stops on the Hugging
# Face model's end-of-turn token by itself, and special tokens never appear in its text.
_SPECIAL = ("<|", "<｜", "[INST]", "[/INST]", "<start_of_turn>", "<end_of_turn>")


@dataclass
class Outcome:
    name: str
    repo: str = ""  # the Hugging Face repository; "" = not mapped
    reason: str = ""  # why not, or how (e.g. "via llama3.1:8b")
    entry: dict[str, Any] | None = None  # the config's models[] entry


def plan(found: list[Found], lookup: catalog.Catalog) -> list[Outcome]:
    bases = {f.weights: (lookup.find(f.name), f) for f in found if f.weights and lookup.find(f.name)}
    out = []
    for model in found:
        entry, base = lookup.find(model.name), None
        if entry is None and model.weights in bases:
            entry, base = bases[model.weights]
        if entry is None:
            out.append(Outcome(model.name, reason=_unknown(model)))
        elif model.adapters:
            out.append(Outcome(model.name, entry.repo, "ADAPTER (LoRA) layers are not converted; vLLM serves LoRA "
                               "adapters with --enable-lora --lora-modules"))  # fmt: skip
        elif base is not None and model.template.strip() != base.template.strip():
            out.append(Outcome(model.name, entry.repo, "TEMPLATE override: vLLM renders the Hugging Face chat template; "
                               "put what the template adds into `system` or the client"))  # fmt: skip
        else:
            out.append(Outcome(model.name, entry.repo, f"via {base.name}" if base else "", _entry(model, entry)))
    return out


def _unknown(model: Found) -> str:
    if model.name.startswith("hf.co/") or model.name.startswith("huggingface.co/"):
        return "a GGUF file from Hugging Face: vLLM needs the original (safetensors) repository; add it under `catalog:`"
    return "custom GGUF weights with no known Hugging Face source (not a library model, nor built FROM one installed here)"


def _entry(model: Found, entry: catalog.Entry) -> dict[str, Any]:
    launch: dict[str, Any] = {"model": entry.repo}
    if entry.args:
        launch["args"] = list(entry.args)
    out: dict[str, Any] = {"name": model.name, "launch": launch}
    options = dict(model.parameters)
    stops = [s for s in options.pop("stop", []) if not (isinstance(s, str) and s.startswith(_SPECIAL))]
    if stops:
        options["stop"] = stops
    if options:
        out["options"] = options
    if model.system.strip():
        out["system"] = model.system.strip()
    return out


def render(outcomes: list[Outcome], source: str, now: datetime) -> str:
    mapped = [o.entry for o in outcomes if o.entry is not None]
    lines = [f"# Written by `ollama-vllm-proxy migrate --from {source}` on {now:%Y-%m-%d %H:%M} UTC.",
             "# Review it, then: ollama-vllm-proxy serve --config THIS_FILE", ""]  # fmt: skip
    address = urlsplit(source) if source.startswith(("http://", "https://")) else None
    if address is not None and address.port:
        lines += ["# The address Ollama answered on, so clients keep working unchanged.",
                  f"listen: {address.hostname}:{address.port}", ""]  # fmt: skip
    lines += ["# Library names not listed below are served too, once pulled (`ollama pull NAME`).", "catalog: []", ""]
    lines += ["# One managed model per Ollama model: the proxy starts vLLM for it on demand.",
              yaml.safe_dump({"models": mapped}, sort_keys=False, allow_unicode=True, width=120).rstrip()]  # fmt: skip
    skipped = [o for o in outcomes if o.entry is None]
    if skipped:
        lines += ["", "# Not migrated:"]
        lines += [f"#   {o.name}: {o.reason}" for o in skipped]
    return "\n".join(lines) + "\n"


def summary(outcomes: list[Outcome], out: str | None, source: str) -> str:
    width = max([len("OLLAMA MODEL"), *(len(o.name) for o in outcomes)])
    repo_width = max([len("HUGGING FACE REPOSITORY"), *(len(o.repo) for o in outcomes)])
    rows = [f"{'OLLAMA MODEL':<{width}}  {'HUGGING FACE REPOSITORY':<{repo_width}}  RESULT"]
    for o in outcomes:
        result = ("migrated" + (f" ({o.reason})" if o.reason else "")) if o.entry is not None else f"not migrated: {o.reason}"
        rows.append(f"{o.name:<{width}}  {o.repo or '-':<{repo_width}}  {result}")
    config = out or "proxy.yaml"
    address = urlsplit(source) if source.startswith(("http://", "https://")) else None
    listen = f"{address.hostname}:{address.port}" if address and address.port else "127.0.0.1:11434"
    pulls = [o.name for o in outcomes if o.entry is not None]
    rows += ["", "Next:"]
    if not out:
        rows.append("  0. save the config printed above:  ollama-vllm-proxy migrate --from ... --out proxy.yaml")
    rows += [f"  1. review {config}",
             "  2. stop Ollama:  sudo systemctl stop ollama   (or quit the Ollama app)",
             f"  3. start the proxy on its address:  ollama-vllm-proxy serve --config {config} --listen {listen}",
             "  4. download the weights (Hugging Face; gated models need HF_TOKEN in the proxy's environment):"]  # fmt: skip
    rows += [f"       OLLAMA_HOST={listen} ollama pull {name}" for name in pulls] or ["       (no model was migrated)"]
    return "\n".join(rows) + "\n"


def main(source: str, out: str | None, stderr: TextIO | None = None, stdout: TextIO | None = None) -> int:
    stderr, stdout = stderr or sys.stderr, stdout or sys.stdout
    try:
        found = read(source)
    except SourceError as exc:
        print(f"ollama-vllm-proxy migrate: {exc}", file=stderr)
        return 1
    outcomes = plan(found, catalog.merged())
    text = render(outcomes, source, datetime.now(UTC))
    if out:
        try:
            with open(out, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            print(f"ollama-vllm-proxy migrate: cannot write {out}: {exc.strerror}", file=stderr)
            return 1
    else:
        stdout.write(text)
    stderr.write(summary(outcomes, out, source))
    return 0
