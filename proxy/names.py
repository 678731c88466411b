"""Ollama model names: parsing, matching and display (Ollama's types/model/name.go).

Grammar: ``[host/][namespace/]model[:tag]``; defaults ``registry.ollama.ai``, ``library``,
``latest``. A ``:`` is a tag separator only after the last ``/``. Matching is
case-insensitive per part, so ``llama3``, ``llama3:latest`` and
``registry.ollama.ai/library/llama3:latest`` are one model while ``llama3:8b`` is another.
"""

from __future__ import annotations

import re
from typing import NamedTuple

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,79}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,79}")
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,349}")
_INVALID = re.compile(r"[^a-z0-9_.\-]+")


class Name(NamedTuple):
    host: str
    namespace: str
    model: str
    tag: str

    def key(self) -> str:
        """The case-folded identity two equivalent spellings share."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}".lower()

    def display(self) -> str:
        """Ollama's display form: default host and ``library`` dropped, tag always kept."""
        parts = []
        if self.host.lower() != DEFAULT_HOST:
            parts.append(self.host)
        if parts or self.namespace.lower() != DEFAULT_NAMESPACE:
            parts.append(self.namespace)
        parts.append(f"{self.model}:{self.tag}")
        return "/".join(parts)


def parse(name: str) -> Name | None:
    """Parse an Ollama model name; ``None`` when it is not a valid name."""
    slash = name.rfind("/")
    tag = DEFAULT_TAG
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not _PART.fullmatch(tag):
            return None
    pieces = name.split("/")
    if len(pieces) > 3 or not _PART.fullmatch(pieces[-1]):
        return None
    host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
    if len(pieces) >= 2:
        namespace = pieces[-2]
        if not _NAMESPACE.fullmatch(namespace):
            return None
    if len(pieces) == 3:
        host = pieces[0]
        if not _HOST.fullmatch(host):
            return None
    return Name(host, namespace, pieces[-1], tag)


def key(name: str) -> str | None:
    parsed = parse(name)
    return parsed.key() if parsed else None


def from_served(served: str) -> Name:
    """An Ollama name for a vLLM served-model name.

    Served names are free text (often ``Org/Model-7B`` or a filesystem path). They are
    lower-cased, characters Ollama forbids become ``-``, and a missing tag becomes
    ``latest``, so ``Qwen/Qwen3-8B`` lists as ``qwen/qwen3-8b:latest``.
    """
    parsed = parse(served.lower())
    if parsed is not None:
        return parsed
    pieces = [p for p in served.lower().replace(":", "-").split("/") if p][-2:]
    cleaned = [_INVALID.sub("-", p).strip("-.") or "model" for p in pieces] or ["model"]
    cleaned = [p if p[0].isalnum() or p[0] == "_" else f"m{p}" for p in cleaned]
    namespace = cleaned[0].replace(".", "-") if len(cleaned) == 2 else DEFAULT_NAMESPACE
    return Name(DEFAULT_HOST, namespace, cleaned[-1][:80], DEFAULT_TAG)
