"""Which Ollama name is served by which backends (replicas) under which served name. State
only, no I/O: discovery feeds it what each backend's ``/v1/models`` listed. The same served
name discovered on several backends, or a model entry whose ``backend:`` lists several,
is one model with several replicas; ``proxy/routing.py`` chooses among them per request.
Managed models (``launch:``) are listed whether running or not; their backend URL is only
known while they run. Library models (proxy/managed/library.py) are routed and listed only
while ``present`` (injected: the Hugging Face cache check) finds their weights."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from proxy import names, toolconf
from proxy.backend import Backend, Backends
from proxy.config import BackendConfig, Config, ModelEntry
from proxy.fairconf import BackendTurns
from proxy.managed import library
from proxy.translate import fim
from proxy.translate.models import ModelFacts


class Route(NamedTuple):
    facts: ModelFacts
    backend: Backend  # the first replica, or the one chosen (handlers.loaded); managed: a placeholder until it runs
    managed: bool = False
    replicas: tuple[Backend, ...] = ()  # every backend that serves the model, ``backend`` among them


@dataclass
class BackendState:
    backend: Backend
    up: bool = False
    error: str = ""
    cards: dict[str, dict[str, Any]] = field(default_factory=dict)  # served name → /v1/models card
    capabilities: dict[str, tuple[str, ...]] = field(default_factory=dict)  # served name → probed
    seen_ns: dict[str, int] = field(default_factory=dict)  # served name → first seen (epoch ns)

    @property
    def config(self) -> BackendConfig:
        return self.backend.config


def _absent(_: str) -> bool:
    return False


class Registry:
    def __init__(self, config: Config, backends: Backends, present: Callable[[str], bool] = _absent) -> None:
        self._states = {b.name: BackendState(backends[b.name]) for b in config.backends}
        self._by_url = {b.url: b.name for b in config.backends}
        self._aliases = [m for m in config.models if m.launch is None]
        self._managed: dict[str, tuple[ModelEntry, BackendState]] = {}
        self._present = present
        self._library: dict[str, str] = {}  # key → repository, for the library's models
        self._alias: dict[str, str] = {}  # a library alias's key → its model's key
        self._catalog = library.lookup(config) if library.on(config) else None
        for entry, item in library.entries(config):
            key = str(names.key(entry.name))
            self._library[key] = item.repo
            self._alias.update({str(names.key(a)): key for a in item.aliases})
        for entry in library.managed(config):
            assert entry.launch is not None
            # Its vLLM's batch (--max-num-seqs) is the fair-turn limit, and with
            # --scheduling-policy priority the keys' priorities are sent to it.
            placeholder = BackendConfig(url=f"managed:{entry.launch.model}", name=entry.name, discover=False,
                                        scheduling_policy=entry.launch.scheduling_policy(),
                                        turns=BackendTurns(max_concurrency=entry.launch.max_num_seqs()))  # fmt: skip
            state = BackendState(backends.make(placeholder))
            state.capabilities[entry.served] = library.capabilities(entry.launch, self._catalog)
            state.seen_ns[entry.served] = time.time_ns()
            if (length := entry.launch.max_model_len()) is not None:
                state.cards[entry.served] = {"id": entry.served, "max_model_len": length}
            self._managed[str(names.key(entry.name))] = (entry, state)
        self._routes: dict[str, Route] = {}
        self._rebuild()

    @property
    def backends(self) -> list[BackendState]:
        return list(self._states.values())

    def backend_names(self) -> set[str]:
        """Every backend name this configuration has: the configured ones and the managed
        models' (their servers' metrics carry the model's name)."""
        return {*self._states, *(state.config.name for _, state in self._managed.values())}

    def update(self, backend: str, cards: list[dict[str, Any]], now_ns: int) -> list[str]:
        """Record a successful listing; returns served names not seen before (to probe)."""
        state = self._states[backend]
        state.up, state.error = True, ""
        state.cards = {str(c["id"]): c for c in cards if c.get("id") and not c.get("parent")}
        new = [s for s in state.cards if s not in state.seen_ns]
        for served in new:
            state.seen_ns[served] = now_ns
        self._rebuild()
        return new

    def inherit(self, old: Registry) -> None:
        """After a reload: what ``old`` learned of the backends and managed models both
        configurations have with the same settings (listing, probed capabilities, first-seen
        times), so a reload neither probes every model again nor changes its ``modified_at``."""
        for name, state in self._states.items():
            before = old._states.get(name)
            if before is not None and before.config == state.config:
                state.up, state.error, state.cards = before.up, before.error, dict(before.cards)
                state.capabilities, state.seen_ns = dict(before.capabilities), dict(before.seen_ns)
        for key, (entry, state) in self._managed.items():
            if key in old._managed and old._managed[key][0] == entry:
                state.cards = dict(old._managed[key][1].cards)
        self._rebuild()

    def update_managed(self, name: str, cards: list[dict[str, Any]]) -> None:
        """What a managed model's running vLLM listed (its ``max_model_len``)."""
        entry, state = self._managed[str(names.key(name))]
        state.cards = {str(c["id"]): c for c in cards if c.get("id") and not c.get("parent")}
        self._rebuild()

    def knows_context(self, name: str) -> bool:
        managed = self._managed.get(str(names.key(name)))
        return managed is None or bool(managed[1].cards)

    def set_capabilities(self, backend: str, served: str, capabilities: tuple[str, ...]) -> None:
        self._states[backend].capabilities[served] = capabilities
        self._rebuild()

    def mark_down(self, backend: str, error: str) -> None:
        state = self._states[backend]
        state.up, state.error = False, error
        self._rebuild()

    def resolve(self, name: str) -> Route | None:
        key = names.key(name)
        if not key:
            return None
        if key not in self._routes:
            key = self._alias.get(key, key)
        route = self._routes.get(key)
        if route is not None and key in self._library and not self._present(self._library[key]):
            return None  # a library name whose weights are not downloaded
        return route

    def models(self) -> list[ModelFacts]:
        return [r.facts for k, r in self._routes.items() if k not in self._library or self._present(self._library[k])]

    def library_repo(self, name: str) -> str | None:
        """The Hugging Face repository of a catalog name or a managed model, for /api/pull."""
        key = names.key(name)
        managed = self._managed.get(self._alias.get(str(key), str(key))) if key else None
        if managed is not None and managed[0].launch is not None:
            return managed[0].launch.model
        found = self._catalog.find(name) if self._catalog else None
        return found.repo if found else None

    def unreachable(self) -> list[BackendState]:
        """Backends whose models are discovered but whose last listing failed: a name
        none of the others serves may be one of theirs."""
        return [s for s in self._states.values() if s.config.discover and not s.up]

    def running_routes(self) -> list[Route]:
        """Routes with a replica whose listing succeeded, each with only those replicas."""
        out = []
        for route in self._routes.values():
            if route.managed:
                continue
            up = tuple(b for b in route.replicas if self._states[b.name].up)
            if up:
                out.append(route._replace(backend=up[0], replicas=up))
        return out

    def replicated(self) -> set[str]:
        """Names of the backends that share a model with another backend."""
        return {b.name for r in self._routes.values() if len(r.replicas) > 1 for b in r.replicas}

    def _rebuild(self) -> None:
        routes: dict[str, Route] = {}
        for key, (entry, state) in self._managed.items():
            parsed = names.parse(entry.name)
            assert parsed is not None  # config validated it
            facts = self._facts(state, entry.served, parsed.display(), entry)
            routes[key] = Route(facts, state.backend, managed=True, replicas=(state.backend,))
        for entry in self._aliases:  # configured aliases win over discovered names
            states = [self._states[self._by_url.get(b, b)] for b in entry.backends or (entry.backend,)]
            parsed = names.parse(entry.name)
            assert parsed is not None  # config validated it
            if parsed.key() not in routes:
                facts = self._facts(self._listed(states, entry.served), entry.served, parsed.display(), entry)
                routes[parsed.key()] = Route(facts, states[0].backend, replicas=tuple(s.backend for s in states))
        discovered: dict[str, list[tuple[BackendState, str]]] = {}
        for state in self._states.values():
            if state.config.discover:
                for served in state.cards:
                    discovered.setdefault(names.from_served(served).key(), []).append((state, served))
        for key, serving in discovered.items():
            if key not in routes:
                state, served = serving[0]
                facts = self._facts(state, served, names.from_served(served).display(), None)
                replicas = tuple(s.backend for s, name in serving if name == served)
                routes[key] = Route(facts, state.backend, replicas=replicas)
        self._routes = routes

    @staticmethod
    def _listed(states: list[BackendState], served: str) -> BackendState:
        """The replica whose listing describes ``served`` (its context length, probes)."""
        return next((s for s in states if served in s.cards), states[0])

    @staticmethod
    def _facts(state: BackendState, served: str, display: str, entry: ModelEntry | None) -> ModelFacts:
        card = state.cards.get(served, {})
        probed = state.capabilities.get(served, ("completion",))
        caps = entry.capabilities if entry and entry.capabilities else probed
        root = str(card.get("root") or served)
        fim_family = (entry.fim if entry else None) or fim.recognise(served, root)
        if fim_family and "completion" in caps and "insert" not in caps:
            caps = (*caps, "insert")
        return ModelFacts(
            name=display,
            backend_url=state.config.public_url,  # hashed into the digest: never the password
            served=served,
            root=root,
            max_model_len=card.get("max_model_len"),
            capabilities=caps,
            family=entry.family if entry else None,
            parameter_size=entry.parameter_size if entry else "",
            quantization_level=entry.quantization_level if entry else "",
            size=entry.size if entry else 0,
            seen_ns=state.seen_ns.get(served, 0),
            options=dict(entry.options) if entry else {},
            configured=bool(entry and (entry.capabilities or entry.launch)),  # a launch spec names its parsers
            fim=fim_family if "insert" in caps else None,
            system=entry.system if entry else "",
            drop_tools=toolconf.drops(entry.tools if entry else None, state.config.tools),
            variant=_variant(entry),
        )


def _variant(entry: ModelEntry | None) -> str:
    """What an alias sets that changes how the model answers; "" for a plain alias."""
    if entry is None or not (entry.options or entry.capabilities or entry.fim or entry.system):
        return ""
    own = {"options": entry.options, "capabilities": entry.capabilities, "fim": entry.fim, "system": entry.system}
    return json.dumps(own, sort_keys=True, default=str)
