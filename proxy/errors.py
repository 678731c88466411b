"""The proxy's one error hierarchy, and the one place that maps it to the wire.

::

    ProxyError                 500  anything unexpected
    ├── BadRequest             400  malformed JSON, wrong field types, invalid values
    ├── Unauthorized           401  API keys are configured and the request has none that fits
    ├── PayloadTooLarge        413  a body over the size limit, on the wire or inflated
    ├── ModelNotFound          404  no backend serves the name (text differs per endpoint)
    ├── NotSupported           501  Ollama features vLLM has no equivalent for
    ├── ServerBusy             503  in-flight cap, no room for a managed model, no fair turn in time (Retry-After)
    ├── ModelLoadFailed        500  a managed model's vLLM did not start (with its log tail)
    ├── BackendUnavailable     502  connection refused / reset / DNS: names the backend
    ├── BackendTimeout         504  no connection or no first byte in time
    │   └── ConnectTimeout     504  no connection in time (nothing was sent)
    └── BackendError           4xx/5xx as vLLM answered, with vLLM's message

Before the first byte a handler's error becomes a real status and ``{"error": msg}``
(Ollama's server/routes.go does the same); after it, ``streaming`` writes one final ``{"error": msg}`` line and
the status stays 200. Nothing here does I/O.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.redact import display_url, scrub, url_secrets


class ProxyError(Exception):
    status = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(ProxyError):
    status = 400


class Unauthorized(ProxyError):
    """Ollama itself has no keys; this is the proxy's own check (proxy/auth.py)."""

    status = 401


class PayloadTooLarge(ProxyError):
    status = 413


class ModelNotFound(ProxyError):
    status = 404


class NotSupported(ProxyError):
    status = 501


class ServerBusy(ProxyError):
    status = 503

    def __init__(self, message: str | None = None, retry_after: int = 1) -> None:
        # Ollama's text when OLLAMA_MAX_QUEUE is full (two spaces, as Ollama writes it).
        super().__init__(message or "server busy, please try again.  maximum pending requests exceeded")
        self.retry_after = max(1, retry_after)  # seconds, sent as the Retry-After header


class ModelLoadFailed(ProxyError):
    """Ollama answers 500 when its runner fails to load a model."""

    status = 500


class BackendUnavailable(ProxyError):
    status = 502


class BackendTimeout(ProxyError):
    status = 504


class ConnectTimeout(BackendTimeout):
    """The backend did not accept a connection within ``timeouts.connect``: nothing was
    sent, so another replica may take the request."""


class BackendError(ProxyError):
    """vLLM answered with an error; ``status`` is vLLM's."""


def unreachable(name: str, url: str, reason: str) -> BackendUnavailable:
    """A backend that refused, reset or dropped a connection; named so operators know which
    (its URL without the password, which is also masked in ``reason``)."""
    return BackendUnavailable(f"vLLM backend {name} ({display_url(url)}) is unreachable: {scrub(reason, url_secrets(url))}")


def not_reachable(down: list[tuple[str, str, str]]) -> BackendUnavailable:
    """A name no reachable backend serves while some backends are down, given as
    (name, url, what discovery saw): the model may be on one of them, so this is their
    outage (502, the text a later outage gives), not Ollama's 404 that makes clients pull."""
    texts = []
    for name, url, why in down:
        texts.append(why if why.startswith(f"vLLM backend {name} (") else unreachable(name, url, why or "not listed yet").message)
    if len(texts) == 1:
        return BackendUnavailable(texts[0])
    return BackendUnavailable(f"{len(texts)} vLLM backends are unreachable: " + "; ".join(texts))


def no_first_byte(name: str, url: str, seconds: float) -> BackendTimeout:
    return BackendTimeout(f"vLLM backend {name} ({display_url(url)}) did not answer within {seconds:g} s")


def bad_stream(detail: str) -> BackendError:
    """A backend reply the proxy cannot read (bad JSON, an unexpected shape, broken
    framing): a fault of the backend, so 502."""
    return BackendError(detail, 502)


def not_found(endpoint: str, model: str) -> ModelNotFound:
    """Ollama's exact unknown-model text for each endpoint (server/routes.go in ollama/ollama)."""
    if endpoint in ("embed", "embeddings"):
        return ModelNotFound(f"model {_go_quote(model)} not found, try pulling it first")
    return ModelNotFound(f"model '{model}' not found")


def no_tools(full_name: str, backend: str, managed: bool, configured: bool) -> BadRequest:
    """Ollama's capability error, with what the operator can do about it."""
    flags = "--enable-auto-tool-choice --tool-call-parser <parser>"
    if managed:
        fix = f"add {flags} to the model's launch.args in the proxy's config.yaml"
    elif configured:
        fix = f"list tools in its capabilities in the proxy's config.yaml once its vLLM runs with {flags}"
    else:
        fix = f"start its vLLM backend {backend} with {flags}"
    return BadRequest(f"{full_name} does not support tools: {fix}, or set drop_unsupported_tools: true "
                      "there to answer such chats without the tools")  # fmt: skip


def to_ollama_error(exc: BaseException) -> tuple[int, dict[str, str]]:
    if isinstance(exc, ProxyError):
        return exc.status, {"error": exc.message}
    return 500, {"error": f"internal error: {type(exc).__name__}"}


_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 413: "invalid_request_error", 404: "not_found_error",
                 501: "not_implemented_error", 503: "service_unavailable_error"}  # fmt: skip


def wire_headers(exc: BaseException) -> dict[str, str] | None:
    """The headers an error's response carries besides its body."""
    if isinstance(exc, ServerBusy):
        return {"Retry-After": str(exc.retry_after)}
    if isinstance(exc, Unauthorized):
        return {"WWW-Authenticate": 'Bearer realm="ollama-vllm-proxy"'}  # RFC 6750 section 3
    return None


def to_openai_error(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The same errors in OpenAI's envelope, for the /v1 passthrough routes."""
    status, body = to_ollama_error(exc)
    kind = _OPENAI_TYPES.get(status, "api_error")
    return status, {"error": {"message": body["error"], "type": kind, "param": None, "code": status}}


def parse_backend_error(status: int, body: bytes, backend: str) -> BackendError:
    """vLLM's error bodies: nested ``{"error": {...}}`` (0.10+), flat ``{"object": "error",
    "message": ...}`` (<= 0.9), ``{"error": "Unauthorized"}`` on 401, or plain text."""
    message = message_from_body(body)
    if not message:
        message = f"vLLM backend {backend} answered HTTP {status}"
    if status >= 500:
        message = f"vLLM backend {backend}: {message}"
    for needle, hint in _HINTS:
        if needle in message:
            message = hint.format(backend=backend, message=message)
            break
    return BackendError(message, status)


# vLLM errors whose text does not tell an Ollama user what to do (texts of vllm/entrypoints/openai/serving_*.py).
_HINTS = (
    ("--enable-auto-tool-choice",
     "this model does not support tools: the vLLM backend {backend} must be started with "
     "--enable-auto-tool-choice --tool-call-parser <parser> ({message})"),
    ("body.stop",
     "too many stop strings: vLLM accepts at most 4 per request (VLLM_MAX_STOP_STRINGS on the "
     "backend {backend}) ({message})"),
)  # fmt: skip


def message_from_body(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace").strip()[:1000]
    return message_from_event(data) or ""


def message_from_event(data: Any) -> str | None:
    """The error message in a vLLM JSON body or SSE event, or None if it is not an error."""
    if not isinstance(data, dict):
        return None
    err = data.get("error")
    if isinstance(err, dict):
        return str(err.get("message") or err.get("type") or "error")
    if isinstance(err, str):
        return err
    if data.get("object") == "error":
        return str(data.get("message") or "error")
    detail = data.get("detail")  # FastAPI's own 404/405 bodies
    if isinstance(detail, str):
        return detail
    return None


def _go_quote(text: str) -> str:
    """Go's %q for the plain names Ollama quotes in its embed errors."""
    return orjson.dumps(text).decode()
