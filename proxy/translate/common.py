"""Small translation policies shared by the endpoints."""

from __future__ import annotations

import base64
import binascii
import math
import re
from datetime import UTC, datetime
from typing import Any

import orjson

from proxy.errors import BadRequest

_NS = 1_000_000_000


def to_ollama_done_reason(finish_reason: str | None) -> str:
    """vLLM ``finish_reason`` → Ollama ``done_reason``.

    Ollama's native API has no ``tool_calls`` reason: a reply that ends in tool calls is
    reported as ``stop`` (Ollama's api/types.go); ``repetition`` (vLLM 0.33's repetition
    detection) ended the reply as a stop does.
    """
    if finish_reason == "length":
        return "length"
    return "stop"


def rfc3339(epoch_ns: int) -> str:
    """UTC RFC 3339 with fractional seconds and a ``Z``, as Ollama writes ``created_at``."""
    seconds, ns = divmod(epoch_ns, _NS)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ns:09d}Z"


def arguments_to_object(arguments: Any) -> dict[str, Any]:
    """Tool-call arguments as Ollama sends them: always an object.

    Input is lenient (many third-party clients send a JSON string); a string that is
    not a JSON object is a 400, as Ollama rejects it.
    """
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, str):
        try:
            parsed = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            return parsed
    raise BadRequest("tool call arguments must be a JSON object")


def arguments_to_string(arguments: Any) -> str:
    """Tool-call arguments as OpenAI/vLLM expects them in history: a JSON string."""
    return orjson.dumps(arguments_to_object(arguments)).decode()


_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def image_data_url(image: Any) -> str:
    """Ollama's bare base64 image → a data URL with the media type sniffed from the bytes."""
    if not isinstance(image, str):
        raise BadRequest("invalid image input: images must be base64 strings")
    try:
        head = base64.b64decode(image[:64].strip() + "=" * (-len(image[:64].strip()) % 4), validate=False)
        base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("illegal base64 data in image input") from None
    media = "image/jpeg"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            media = kind
            break
    else:
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            media = "image/webp"
    return f"data:{media};base64,{image}"


def l2_normalise(vector: list[float]) -> list[float]:
    norm = math.sqrt(math.fsum(v * v for v in vector))
    if norm == 0.0:
        return list(vector)
    return [v / norm for v in vector]


_DURATION = re.compile(r"([-+]?)((?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+)")
_UNIT = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


# Go's time.Duration is int64 nanoseconds, so Ollama keeps a model at most this long
# (≈ 292 years); a negative keep_alive is that maximum (api/types.go, Duration.UnmarshalJSON).
MAX_KEEP_ALIVE_S = (2**63 - 1) / 1e9


def keep_alive_seconds(value: Any) -> float | None:
    """Ollama ``keep_alive``: a number of seconds or a Go duration string; negative means
    forever (returned as ``math.inf``); ``None`` when absent (Ollama's api/types.go, Duration).
    A number past Go's longest duration is that duration; a duration string past it is
    Go's ``time.ParseDuration`` error."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRequest("json: cannot unmarshal bool into Go struct field of type api.Duration")
    if isinstance(value, int | float):
        return math.inf if value < 0 else float(min(value, MAX_KEEP_ALIVE_S))
    if not isinstance(value, str):
        raise BadRequest("json: cannot unmarshal keep_alive into Go struct field of type api.Duration")
    if value in ("0", "+0", "-0"):
        return 0.0
    match = _DURATION.fullmatch(value)
    if not match:
        if re.fullmatch(r"[-+]?\d+(\.\d*)?", value):
            raise BadRequest(f'time: missing unit in duration "{value}"')
        raise BadRequest(f'time: invalid duration "{value}"')
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _UNIT.findall(match.group(2)))
    if seconds > MAX_KEEP_ALIVE_S:
        raise BadRequest(f'time: invalid duration "{value}"')  # Go's overflow error
    return math.inf if match.group(1) == "-" and seconds > 0 else seconds


def with_system(request: dict[str, Any], system: str) -> dict[str, Any]:
    """A model's default system prompt (a Modelfile's SYSTEM) applied as Ollama's
    server/routes.go does: a chat gets it as a first message unless its first message is
    a system message; a generate request uses it when it has no ``system`` of its own
    (and never in raw mode, which has no template)."""
    if not system:
        return request
    messages = request.get("messages")
    if isinstance(messages, list):
        first = messages[0] if messages else None
        if isinstance(first, dict) and str(first.get("role") or "").lower() == "system":
            return request
        return {**request, "messages": [{"role": "system", "content": system}, *messages]}
    if request.get("raw") or request.get("system"):
        return request
    return {**request, "system": system}
