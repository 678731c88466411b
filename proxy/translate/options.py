"""The options table: every Ollama ``options`` key, mapped to vLLM or dropped with a reason.

Policy: only keys the client (or the model's configured defaults) gave are sent, so
values the client did not choose come from the model's ``generation_config.json`` on
the vLLM side, as vLLM intends. Maintenance duty: a key the official clients add must
get a row here; tests/unit/test_options.py walks ollama-python's ``Options`` type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from proxy.errors import BadRequest


class Mapped(NamedTuple):
    param: str  # the vLLM request field
    convert: Callable[[str, Any], Any | None]  # None: leave the field out


def _float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f'option "{key}" must be of type float32')
    return float(value)


_INT64 = (-(2**63), 2**63 - 1)  # Go's int on 64-bit hosts, and the range vLLM's integer fields accept


def _int(key: str, value: Any) -> int:
    # Go truncates any JSON number into an int field; so do we, within int64 (orjson
    # reads integers past 64 bits as floats: 1e20 and 2**64 arrive here as floats).
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f'option "{key}" must be of type int')
    if not _INT64[0] <= value <= _INT64[1]:
        raise BadRequest(f'option "{key}" must be of type int: {value:g} is out of range')
    return int(value)


def _num_predict(key: str, value: Any) -> int | None:
    n = _int(key, value)
    return n if n >= 0 else None  # -1 unlimited, -2 fill the context: vLLM's default


def _top_k(key: str, value: Any) -> int:
    n = _int(key, value)
    return n if n > 0 else -1  # Ollama 0 = off; vLLM's off is -1


def _seed(key: str, value: Any) -> int | None:
    n = _int(key, value)
    return n if n >= 0 else None  # Ollama -1 = random = no seed


def _stop(key: str, value: Any) -> list[str] | None:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise BadRequest(f'option "{key}" must be of type []string')
    # vLLM 0.30+ rejects more than VLLM_MAX_STOP_STRINGS (4) stop strings; duplicates
    # (common in Modelfiles) are dropped so they do not count twice.
    return list(dict.fromkeys(value)) or None


MAPPED: dict[str, Mapped] = {
    "num_predict": Mapped("max_tokens", _num_predict),
    "temperature": Mapped("temperature", _float),
    "top_k": Mapped("top_k", _top_k),
    "top_p": Mapped("top_p", _float),
    "min_p": Mapped("min_p", _float),
    "seed": Mapped("seed", _seed),
    "stop": Mapped("stop", _stop),
    # A multiplicative penalty on both sides; llama.cpp applies it over the last
    # repeat_last_n tokens, vLLM over the whole sequence (vLLM 0.32, vllm/sampling_params.py).
    "repeat_penalty": Mapped("repetition_penalty", _float),
    "presence_penalty": Mapped("presence_penalty", _float),
    "frequency_penalty": Mapped("frequency_penalty", _float),
}

_LOAD_TIME = "fixed when vLLM starts (server flags), not per request"
_REMOVED = "removed from Ollama itself; accepted and ignored as Ollama does"

DROPPED: dict[str, str] = {
    "num_ctx": "vLLM fixes the context at start-up (--max-model-len)",
    "num_keep": "no context shifting in vLLM",
    "repeat_last_n": "vLLM has no penalty window; repetition_penalty covers the whole sequence",
    "typical_p": "vLLM has no locally typical sampling",
    "num_batch": _LOAD_TIME,
    "num_gpu": _LOAD_TIME,
    "main_gpu": _LOAD_TIME,
    "use_mmap": _LOAD_TIME,
    "use_mlock": _LOAD_TIME,
    "num_thread": _LOAD_TIME,
    "numa": _LOAD_TIME,
    "low_vram": _LOAD_TIME,
    "draft_num_predict": "speculative decoding is a vLLM server flag",
    "mirostat": _REMOVED,
    "mirostat_tau": _REMOVED,
    "mirostat_eta": _REMOVED,
    "tfs_z": _REMOVED,
    "penalize_newline": _REMOVED,
    "f16_kv": _REMOVED,
    "logits_all": _REMOVED,
    "vocab_only": _REMOVED,
    "embedding_only": _REMOVED,
}


# Dropped keys that are still fields of Ollama's api.Options: Ollama type-checks them
# (api/types.go FromMap), so a wrong type or an out-of-range number is a 400 here too.
_DROPPED_TYPES: dict[str, Callable[[str, Any], Any]] = {
    **dict.fromkeys(("num_ctx", "num_keep", "repeat_last_n", "num_batch", "num_gpu", "main_gpu", "num_thread"), _int),
    "typical_p": _float,
}


def to_openai_params(options: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """Ollama ``options`` → vLLM sampling fields, plus the keys that were dropped."""
    if options is None:
        return {}, []
    if not isinstance(options, Mapping):
        raise BadRequest("json: cannot unmarshal options into Go struct field of type map[string]interface {}")
    params: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in options.items():
        mapped = MAPPED.get(key)
        if mapped is None:
            if key in _DROPPED_TYPES and value is not None:
                _DROPPED_TYPES[key](key, value)
            dropped.append(key)  # DROPPED keys and unknown ones alike: Ollama ignores both
            continue
        if value is None:
            continue
        converted = mapped.convert(key, value)
        if converted is not None:
            params[mapped.param] = converted
    return params, dropped
