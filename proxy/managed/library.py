"""Ollama library names as managed models: with managed models on (a ``launch:`` model,
``--model``, or a ``catalog:`` key), every catalog entry that is not configured is a
managed model too, served once its weights are in the Hugging Face cache (as Ollama serves
any pulled model) and listed by /api/tags only then. Their vLLM runs with
``HF_HUB_OFFLINE=1``: it loads the weights /api/pull put in the cache and asks no hub."""

from __future__ import annotations

from dataclasses import replace

from proxy import catalog, names
from proxy.config import Config, ModelEntry
from proxy.managed.settings import LaunchSettings


def on(config: Config) -> bool:
    return bool(config.managed) or config.library.catalog is not None


def lookup(config: Config) -> catalog.Catalog:
    """The built-in catalog merged with the config's entries."""
    return catalog.merged(config.library.catalog or ())


def entries(config: Config) -> list[tuple[ModelEntry, catalog.Entry]]:
    """One managed model per catalog entry whose names are all free (not configured)."""
    if not on(config):
        return []
    taken = {names.key(m.name) for m in config.models}
    out = []
    for item in lookup(config).entries:
        if any(names.key(n) in taken for n in item.names):
            continue
        display = names.parse(item.name)
        assert display is not None  # the catalog validated it
        size = "" if item.params_b is None else f"{item.params_b:g}B"
        out.append((ModelEntry(name=display.display(), backend="", served=display.display(), parameter_size=size,
                               launch=replace(item.launch(), env={"HF_HUB_OFFLINE": "1"})), item))  # fmt: skip
    return out


def managed(config: Config) -> tuple[ModelEntry, ...]:
    """Every managed model: the configured ones, then the library's."""
    return (*config.managed, *(m for m, _ in entries(config)))


def capabilities(launch: LaunchSettings, lookup: catalog.Catalog | None) -> tuple[str, ...]:
    """What a managed model can do before it runs: what its flags enable, and vision when
    the catalog says its repository takes images (a library model, or a configured one
    that loads a catalog repository, as `migrate` writes them)."""
    caps = launch.capabilities()
    item = lookup.for_repo(launch.model) if lookup else None
    return (*caps, "vision") if item and item.vision and "completion" in caps else caps
