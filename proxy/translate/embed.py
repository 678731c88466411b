"""``/api/embed`` and legacy ``/api/embeddings`` ↔ ``/v1/embeddings``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.errors import BackendError, BadRequest
from proxy.translate.common import l2_normalise


def embed_inputs(request: Mapping[str, Any]) -> list[str]:
    """``input`` as a list; ``[]`` for an empty or missing input (a load request)."""
    value = request.get("input")
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise BadRequest("invalid input type")


def to_openai_embed_request(inputs: list[str], served: str, truncate: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": served, "input": inputs}
    if truncate:
        # Ollama truncates over-long input by default and keeps its start (vLLM 0.32, truncate_prompt_tokens in protocol.py).
        body["truncate_prompt_tokens"] = -1
        body["truncation_side"] = "right"
    return body


def vectors(response: Mapping[str, Any], expected: int) -> list[list[float]]:
    """The vectors in input order, whatever order vLLM listed them in."""
    data = sorted(response.get("data") or [], key=lambda d: d.get("index", 0))
    result = [d.get("embedding") for d in data]
    if len(result) != expected or not all(isinstance(v, list) for v in result):
        raise BackendError("vLLM returned an unexpected embeddings response")
    return result


def to_ollama_embeddings(raw: list[list[float]], dimensions: Any) -> list[list[float]]:
    """Ollama's ``/api/embed`` vectors: L2-normalised; with ``dimensions`` cut to the
    first N values and normalised again (Ollama's server/routes.go, EmbedHandler)."""
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 0):
        raise BadRequest("json: cannot unmarshal dimensions into Go struct field EmbedRequest.dimensions of type int")
    out = []
    for vector in raw:
        if dimensions:
            vector = l2_normalise(vector)[:dimensions]
        out.append(l2_normalise(vector))
    return out


def prompt_tokens(response: Mapping[str, Any]) -> int | None:
    usage = response.get("usage") or {}
    count = usage.get("prompt_tokens")
    return int(count) if count else None
