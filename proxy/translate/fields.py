"""The JSON type of every request field, checked the way Go's decoder checks Ollama's
request structs (ollama/api/types.go), before anything else looks at the request.

A wrong type is a 400 with Go's text: ``json: cannot unmarshal string into Go struct
field Message.messages.images of type []api.ImageData`` (the innermost struct, then the
path from the request). Fields not listed take any value (``format``, ``think`` and
``keep_alive`` are checked where they are translated).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.errors import BadRequest
from proxy.translate.options import to_openai_params

Kind = type | tuple[type, ...]
Table = dict[str, tuple[Kind, str]]  # field → (Python kinds JSON decodes to, Go type)

_STR, _BOOL, _INT = (str, "string"), (bool, "bool"), (int, "int")
_OPTIONS = (dict, "map[string]interface {}")

CHAT: Table = {"model": _STR, "messages": (list, "[]api.Message"), "stream": _BOOL, "tools": (list, "api.Tools"),
               "options": _OPTIONS, "logprobs": _BOOL, "top_logprobs": _INT}  # fmt: skip
GENERATE: Table = {"model": _STR, "prompt": _STR, "suffix": _STR, "system": _STR, "template": _STR,
                   "images": (list, "[]api.ImageData"), "context": (list, "[]int"), "raw": _BOOL, "stream": _BOOL,
                   "options": _OPTIONS, "logprobs": _BOOL, "top_logprobs": _INT}  # fmt: skip
MESSAGE: Table = {"role": _STR, "content": _STR, "thinking": _STR, "images": (list, "[]api.ImageData"),
                  "tool_calls": (list, "[]api.ToolCall"), "tool_name": _STR, "tool_call_id": _STR}  # fmt: skip
EMBED: Table = {"model": _STR, "truncate": _BOOL, "dimensions": _INT, "options": _OPTIONS}
EMBEDDINGS: Table = {"model": _STR, "prompt": _STR, "options": _OPTIONS}
SHOW: Table = {"model": _STR, "name": _STR, "verbose": _BOOL, "system": _STR, "template": _STR, "options": _OPTIONS}
PULL: Table = {"model": _STR, "name": _STR, "insecure": _BOOL, "stream": _BOOL}


def go_kind(value: Any) -> str:
    """How Go's decoder names a JSON value in its errors."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "number"


def check(body: Mapping[str, Any], table: Table, struct: str, path: str = "") -> None:
    for key, (kind, go_type) in table.items():
        value = body.get(key)
        if value is not None and not _is(value, kind):
            raise type_error(value, struct, f"{path}{key}", go_type)


def check_chat(body: Mapping[str, Any]) -> None:
    check(body, CHAT, "ChatRequest")
    to_openai_params(body.get("options"))  # option types, even for a load request (as Ollama)
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            raise type_error(message, "ChatRequest", "messages", "api.Message")
        check_message(message)


def check_generate(body: Mapping[str, Any]) -> None:
    check(body, GENERATE, "GenerateRequest")
    to_openai_params(body.get("options"))
    for image in body.get("images") or ():
        if not isinstance(image, str):
            raise type_error(image, "GenerateRequest", "images", "api.ImageData")


def check_message(message: Mapping[str, Any]) -> None:
    check(message, MESSAGE, "Message", "messages.")
    for image in message.get("images") or ():
        if not isinstance(image, str):
            raise type_error(image, "Message", "messages.images", "api.ImageData")
    for call in message.get("tool_calls") or ():
        if not isinstance(call, dict):
            raise type_error(call, "Message", "messages.tool_calls", "api.ToolCall")
        function = call.get("function")
        if not isinstance(function, dict):
            raise type_error(function, "ToolCall", "messages.tool_calls.function", "api.ToolCallFunction")
        if call.get("id") is not None and not isinstance(call["id"], str):
            raise type_error(call["id"], "ToolCall", "messages.tool_calls.id", "string")
        name = function.get("name")
        if name is not None and not isinstance(name, str):
            raise type_error(name, "ToolCallFunction", "messages.tool_calls.function.name", "string")


def type_error(value: Any, struct: str, path: str, go_type: str) -> BadRequest:
    return BadRequest(f"json: cannot unmarshal {go_kind(value)} into Go struct field {struct}.{path} of type {go_type}")


def _is(value: Any, kind: Kind) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)
