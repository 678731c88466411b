"""The catalog: Ollama library names (``llama3.1:8b``, ``qwen3``) mapped to the Hugging Face
repositories vLLM serves, from the package's ``catalog.yaml`` plus the config's
``catalog:`` entries (same schema; an entry with a built-in name replaces it).

An entry's vLLM flags come from proxy/managed/families.py (one source of truth): the
catalog names the repository, families.py knows which parsers that repository needs.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

import yaml

from proxy import names
from proxy.confcheck import ConfigError, boolean, choice, listing, require_mapping, text
from proxy.managed.settings import LaunchSettings, arguments

KINDS = ("chat", "embedding")
QUANTIZATIONS = ("awq", "gptq", "fp8")
_KEYS = {"name", "aliases", "repo", "family", "kind", "params_b", "context_length", "args", "gated", "notes",
         "quantized", "source", "vision"}  # fmt: skip


@dataclass(frozen=True)
class Entry:
    name: str  # the Ollama name and tag, e.g. "llama3.1:8b"
    repo: str  # the Hugging Face repository vLLM loads
    aliases: tuple[str, ...] = ()  # other Ollama names of the same model ("llama3.1" = llama3.1:latest)
    family: str | None = None  # the families.py row whose flags apply
    kind: str = "chat"
    params_b: float | None = None  # nominal billions of parameters
    context_length: int | None = None  # vLLM's default --max-model-len, as the model card states it
    args: tuple[str, ...] = ()  # extra vLLM arguments
    gated: bool = False
    vision: bool = False  # takes images (vLLM serves it as a multimodal model)
    notes: str = ""
    quantized: Mapping[str, str] = field(default_factory=dict)  # awq/gptq/fp8 → repository
    source: str = ""  # the model card

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def launch(self) -> LaunchSettings:
        return LaunchSettings(model=self.repo, args=self.args)

    def _flag(self, flag: str) -> str | None:
        args = self.launch().full_args()
        return next((args[i + 1] for i, a in enumerate(args[:-1]) if a == flag), None)

    @property
    def tool_parser(self) -> str | None:
        return self._flag("--tool-call-parser")

    @property
    def reasoning_parser(self) -> str | None:
        return self._flag("--reasoning-parser")

    @property
    def gpu_memory_gb(self) -> float | None:
        """The weights at vLLM's default 16-bit dtype: 2 bytes per parameter (KV cache extra)."""
        return None if self.params_b is None else round(self.params_b * 2, 2)


class Catalog:
    def __init__(self, entries: tuple[Entry, ...]) -> None:
        self.entries = entries
        self._by_key: dict[str, Entry] = {}
        self._by_repo: dict[str, Entry] = {}
        for entry in entries:
            for name in entry.names:
                self._by_key[str(names.key(name))] = entry
            for repo in (entry.repo, *entry.quantized.values()):
                self._by_repo.setdefault(repo.lower(), entry)

    def find(self, name: str) -> Entry | None:
        key = names.key(name)
        return self._by_key.get(key) if key else None

    def for_repo(self, repo: str) -> Entry | None:
        """The entry whose repository, or one of its quantized ones, is ``repo`` (Hugging
        Face ids are case-insensitive)."""
        return self._by_repo.get(repo.lower())


@dataclass(frozen=True)
class LibrarySettings:
    """The config's catalog keys."""

    catalog: tuple[Entry, ...] | None = None  # the `catalog:` entries; None: the key is absent
    delete_weights: bool = False  # /api/delete of a managed model removes its downloaded weights


def settings(data: Mapping[str, Any]) -> LibrarySettings:
    """``catalog`` and ``delete_weights`` from the top level of the config."""
    user = parse(data["catalog"], "catalog") if "catalog" in data else None
    return LibrarySettings(user, boolean(data.get("delete_weights", False), "delete_weights"))


def parse(data: Any, where: str) -> tuple[Entry, ...]:
    entries = tuple(_entry(item, f"{where}[{i}]") for i, item in enumerate(listing(data, where)))
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        for name in entry.names:
            key = str(names.key(name))
            if key in seen:
                raise ConfigError(f"{where}[{i}]: the name {name!r} is listed twice")
            seen.add(key)
    return entries


def _entry(data: Any, where: str) -> Entry:
    require_mapping(data, where, _KEYS)
    for key in ("name", "repo"):
        if key not in data:
            raise ConfigError(f"{where}.{key}: missing")
    aliases = tuple(text(a, f"{where}.aliases") for a in listing(data.get("aliases", []), f"{where}.aliases"))
    for name in (data["name"], *aliases):
        if not isinstance(name, str) or names.parse(name) is None:
            raise ConfigError(f"{where}.name: {name!r} is not a valid Ollama model name")
    quantized = data.get("quantized", {})
    require_mapping(quantized, f"{where}.quantized", set(QUANTIZATIONS))
    params = data.get("params_b")
    if params is not None and (isinstance(params, bool) or not isinstance(params, int | float) or params <= 0):
        raise ConfigError(f"{where}.params_b: expected a positive number of billions, got {params!r}")
    context = data.get("context_length")
    if context is not None and (isinstance(context, bool) or not isinstance(context, int) or context < 1):
        raise ConfigError(f"{where}.context_length: expected a whole number of tokens, got {context!r}")
    return Entry(
        name=data["name"],
        repo=text(data["repo"], f"{where}.repo"),
        aliases=aliases,
        family=text(data["family"], f"{where}.family") if "family" in data else None,
        kind=choice(data.get("kind", "chat"), f"{where}.kind", KINDS),
        params_b=None if params is None else float(params),
        context_length=context,
        args=arguments(data.get("args", []), f"{where}.args"),
        gated=boolean(data.get("gated", False), f"{where}.gated"),
        vision=boolean(data.get("vision", False), f"{where}.vision"),
        notes=text(data["notes"], f"{where}.notes") if "notes" in data else "",
        quantized={k: text(v, f"{where}.quantized.{k}") for k, v in quantized.items()},
        source=text(data["source"], f"{where}.source") if "source" in data else "",
    )


@functools.cache
def builtin() -> tuple[Entry, ...]:
    """The package's catalog.yaml."""
    raw = resources.files(__package__).joinpath("catalog.yaml").read_text(encoding="utf-8")
    return parse(yaml.safe_load(raw)["models"], "catalog.yaml")


def merged(user: tuple[Entry, ...] = ()) -> Catalog:
    """The built-in entries, each replaced by a ``catalog:`` entry of the same name (which
    keeps the built-in aliases unless it lists its own), then the user's new ones."""
    base = {names.key(e.name): e for e in builtin()}
    own = tuple(replace(e, aliases=base[names.key(e.name)].aliases) if names.key(e.name) in base and not e.aliases
                else e for e in user)  # fmt: skip
    taken = {names.key(n) for e in own for n in e.names}
    kept = [replace(e, aliases=tuple(a for a in e.aliases if names.key(a) not in taken))
            for e in builtin() if names.key(e.name) not in taken]  # fmt: skip
    return Catalog((*kept, *own))
