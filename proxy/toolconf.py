"""``drop_unsupported_tools``: what a chat with ``tools`` gets from a model that has no
tool parser. Ollama answers ``400 … does not support tools`` (the default); with the switch
the proxy answers the chat without the tools instead. Open WebUI sends its built-in tools
with every chat, so a model vLLM serves without ``--enable-auto-tool-choice`` would refuse
every chat. A model entry's setting wins over its backend's."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.confcheck import boolean

KEYS = frozenset({"drop_unsupported_tools"})


@dataclass(frozen=True)
class ToolSettings:
    drop_unsupported: bool | None = None  # None: not set here (a model then follows its backend)


def parse(data: Mapping[str, Any], where: str) -> ToolSettings:
    """The tool keys of one ``backends[]`` or ``models[]`` entry."""
    if "drop_unsupported_tools" not in data:
        return ToolSettings()
    return ToolSettings(boolean(data["drop_unsupported_tools"], f"{where}.drop_unsupported_tools"))


def drops(model: ToolSettings | None, backend: ToolSettings) -> bool:
    """Whether a model answers chats with unsupported tools without them."""
    if model is not None and model.drop_unsupported is not None:
        return model.drop_unsupported
    return bool(backend.drop_unsupported)
