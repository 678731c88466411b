"""Stream translation shared by chat and generate: vLLM chunks in, Ollama objects out.

A translator is fed each decoded SSE event with the time it arrived and returns the
Ollama objects to write for it; ``finish`` returns the final ``done: true`` object.
Timings are the proxy's own wall-clock measurements (see ``_metrics``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import orjson

from proxy.errors import BackendError, bad_stream, message_from_event
from proxy.translate.common import to_ollama_done_reason

_T = TypeVar("_T")
_NO_DELTA: dict[str, Any] = {}  # read only

_TEXT = rb'((?:[^"\\\x00-\x1f]++|\\["\\bfnrt])*+)'  # the text of a chunk below (a JSON string's inside)
_PLAIN_TEXT = re.compile(_TEXT)

# The chunks that carry one piece of text and nothing else, exactly as vLLM writes them
# (vLLM 0.32, vllm/entrypoints/openai/serving_chat.py and serving_completion.py: pydantic's
# JSON, fields in this order, nulls written out). The text group admits only the escapes
# that orjson writes the same way (\" \\ \b \f \n \r \t; not \/ or \uXXXX) and no raw
# control character, so its bytes are already what orjson would write for the decoded
# text. Any other chunk (the role chunk, finish_reason, usage, logprobs, tool calls,
# reasoning, other escapes, another server's field order) takes the parsing path of ``feed``.
_TEXT_CHUNKS = (
    re.compile(
        rb'\{"id":"[^"\\]*","object":"chat\.completion\.chunk","created":\d+,"model":"[^"\\]*",'
        rb'"choices":\[\{"index":0,"delta":\{"content":"' + _TEXT + rb'"\},"logprobs":null,"finish_reason":null'
        rb'(?:,"token_ids":null)?\}\](?:,"usage":null)?\}'
    ),
    re.compile(
        rb'\{"id":"[^"\\]*","object":"text_completion","created":\d+,"model":"[^"\\]*",'
        rb'"choices":\[\{"index":0,"text":"' + _TEXT + rb'","logprobs":null,"finish_reason":null,"stop_reason":null'
        rb'(?:,"prompt_token_ids":null)?(?:,"token_ids":null)?\}\](?:,"usage":null)?\}'
    ),
)


@functools.cache
def _parts(template: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """A ``TEXT_LINE`` as the four bytes around its three ``%b``."""
    a, b, c, d = template.split(b"%b")
    return a, b, c, d


@dataclass
class _PartialCall:
    id: str | None = None
    name: str = ""
    arguments: str = ""


@dataclass
class StreamTranslator:
    model: str  # echoed exactly as the client spelled it
    arrival_ns: int  # monotonic time the client's request arrived
    sent_ns: int = 0  # monotonic time the upstream request was sent
    first_ns: int | None = None  # first upstream chunk (prompt processed)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    tool_calls: dict[int, _PartialCall] = field(default_factory=dict)
    context: bool = False  # generate: return prompt + output token ids as `context`
    prompt_ids: list[int] | None = None  # from vLLM's return_token_ids
    output_ids: list[int] = field(default_factory=list)
    output_text: list[str] = field(default_factory=list)  # kept only while ids are missing
    # ``line``'s output: the JSON of the model name and of the last ``created_at``
    _model_json: bytes = field(default=b"", init=False, repr=False)
    _created: str = field(default="", init=False, repr=False)
    _created_json: bytes = field(default=b"", init=False, repr=False)
    # the bytes around the text of the last text chunk: a stream's next ones share them
    _text_prefix: bytes = field(default=b"", init=False, repr=False)
    _text_suffix: bytes = field(default=b"", init=False, repr=False)
    # the Ollama line of a text chunk, ``%`` (model JSON, created_at JSON, text bytes); see ``line``
    TEXT_LINE: ClassVar[bytes] = b""

    def line(self, event: bytes, created_at: str, now_ns: int) -> bytes | None:
        """The NDJSON line for an event that is one of vLLM's plain text chunks
        (``_TEXT_CHUNKS``), byte for byte what ``feed`` followed by ``orjson.dumps`` gives,
        without parsing it; None for every other event, which then goes to ``feed``.

        A stream's text chunks differ only in their text (same id, created, model and
        field order), so once one matched, the next is checked by its bytes around the
        text and the text alone: exactly the match the whole pattern would make."""
        prefix, suffix = self._text_prefix, self._text_suffix
        start, end = len(prefix), len(event) - len(suffix)
        if prefix and start <= end and event.startswith(prefix) and event.endswith(suffix):
            text = event[start:end]
            if _PLAIN_TEXT.fullmatch(text) is None:
                return self._matched(event, created_at, now_ns)
            return self._text_line(text, created_at, now_ns)
        return self._matched(event, created_at, now_ns)

    def fast_line(self) -> tuple[bytes, bytes, tuple[bytes, bytes, bytes, bytes], bytes] | None:
        """What the C read path (proxy/_fast.c) needs to write the next text chunks
        exactly as ``line`` would: the text's prefix and suffix, ``TEXT_LINE`` split at its
        three ``%b``, and the model's JSON; None until ``line`` has matched a text chunk
        and recorded the first token's time, and while ``_text_line`` keeps the text."""
        if not self._text_prefix or not self._model_json or self.first_ns is None:
            return None
        if self.context and self.prompt_ids is None:
            return None
        return self._text_prefix, self._text_suffix, _parts(self.TEXT_LINE), self._model_json

    def _matched(self, event: bytes, created_at: str, now_ns: int) -> bytes | None:
        for shape in _TEXT_CHUNKS:
            match = shape.fullmatch(event)
            if match is not None:
                break
        else:
            return None
        self._text_prefix, self._text_suffix = event[: match.start(1)], event[match.end(1) :]
        return self._text_line(match.group(1), created_at, now_ns)

    def _text_line(self, text: bytes, created_at: str, now_ns: int) -> bytes | None:
        if not text or not self.TEXT_LINE:
            return None  # no line for an empty text; ``feed`` keeps the other bookkeeping
        if not text.isascii():
            try:
                text.decode()
            except UnicodeDecodeError:
                return None  # ``feed`` reports it as a broken stream
        if self.first_ns is None:
            self.first_ns = now_ns
        if self.context and self.prompt_ids is None:
            self.output_text.append(orjson.loads(b'"%b"' % text) if b"\\" in text else text.decode())
        if created_at != self._created:
            self._created, self._created_json = created_at, orjson.dumps(created_at)
        if not self._model_json:
            self._model_json = orjson.dumps(self.model)
        return self.TEXT_LINE % (self._model_json, self._created_json, text)

    def feed(self, event: bytes, created_at: str, now_ns: int) -> list[dict[str, Any]]:
        """The Ollama objects for one SSE event. A event that is not JSON, is a vLLM error,
        or has a shape no OpenAI-compatible server sends raises ``BackendError``."""
        try:
            data = orjson.loads(event)
        except orjson.JSONDecodeError:
            raise bad_stream(f"vLLM sent an unreadable stream event: {event[:200]!r}") from None
        if not isinstance(data, dict):
            raise _unexpected(event)
        error = message_from_event(data)
        if error is not None:
            raise BackendError(error)
        # Wrong shapes surface as the errors below, checked once here rather than per field:
        # e.g. a `choices` or `delta` that is not an object has no `.get`. Values that are
        # kept or sent on are type-checked where they are read.
        try:
            usage = data.get("usage")
            if usage:
                self.usage = _usage(usage)
            if data.get("prompt_token_ids"):  # chat: on the first chunk
                self.prompt_ids = _ids(data["prompt_token_ids"])
            out = []
            for choice in data.get("choices") or ():
                if self.first_ns is None:
                    self.first_ns = now_ns
                delta = choice.get("delta") or choice.get("message") or _NO_DELTA
                text = delta.get("content") or choice.get("text") or ""
                thinking = delta.get("reasoning") or delta.get("reasoning_content") or ""
                if type(text) is not str or type(thinking) is not str:
                    raise TypeError("text")
                if delta.get("tool_calls"):
                    self._add_tool_calls(_of(delta["tool_calls"], list))
                if choice.get("finish_reason"):
                    self.finish_reason = _of(choice["finish_reason"], str)
                if choice.get("prompt_token_ids"):  # completions: on the choice
                    self.prompt_ids = _ids(choice["prompt_token_ids"])
                if choice.get("token_ids"):
                    self.output_ids += _ids(choice["token_ids"])
                logprobs = to_ollama_logprobs(choice.get("logprobs"))
                if text and self.context and self.prompt_ids is None:
                    self.output_text.append(text)  # for /tokenize, if no ids come at all
                if text or thinking or logprobs:
                    chunk = self.chunk(created_at, text, thinking)
                    if logprobs:
                        chunk["logprobs"] = logprobs
                    out.append(chunk)
            return out
        except (AttributeError, KeyError, TypeError, ValueError):
            raise _unexpected(event) from None

    def finish(self, created_at: str, now_ns: int) -> dict[str, Any]:
        if self.finish_reason is None:
            raise bad_stream("the vLLM stream ended before the reply was complete")
        if self.finish_reason in ("abort", "error"):
            raise BackendError(f"the vLLM backend ended the request ({self.finish_reason})")
        final = self.final(created_at, self._complete_tool_calls())
        final["done_reason"] = to_ollama_done_reason(self.finish_reason)
        if self.context:  # always there for a templated generate; [] when no ids could be had
            final["context"] = [] if self.prompt_ids is None else self.prompt_ids + self.output_ids
        final.update(self._metrics(now_ns))
        return final

    @property
    def missing_context(self) -> bool:
        """The reply should carry ``context`` but vLLM sent no token ids."""
        return self.context and self.prompt_ids is None

    def set_context(self, ids: list[int]) -> None:
        """``context`` from elsewhere (vLLM's ``/tokenize``): prompt and output ids."""
        self.prompt_ids, self.output_ids = ids, []

    def chunk(self, created_at: str, text: str, thinking: str) -> dict[str, Any]:
        raise NotImplementedError

    def final(self, created_at: str, tool_calls: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    def _add_tool_calls(self, deltas: list[dict[str, Any]]) -> None:
        # Fragments of one call share an index; the name comes once, the arguments in
        # pieces, and some parsers send explicit nulls (vLLM 0.32, vllm/entrypoints/openai/serving_chat.py).
        for position, delta in enumerate(deltas):
            index = delta.get("index")
            call = self.tool_calls.setdefault(position if index is None else index, _PartialCall())
            call.id = call.id or _of(delta.get("id") or "", str) or None
            function = _of(delta.get("function") or {}, dict)
            call.name += _of(function.get("name") or "", str)
            arguments = function.get("arguments")
            if isinstance(arguments, dict):  # non-streamed shape, already an object
                arguments = orjson.dumps(arguments).decode()
            call.arguments += _of(arguments or "", str)

    def _complete_tool_calls(self) -> list[dict[str, Any]]:
        calls = []
        for index in sorted(self.tool_calls):
            call = self.tool_calls[index]
            try:
                arguments = orjson.loads(call.arguments) if call.arguments.strip() else {}
            except orjson.JSONDecodeError:
                arguments = None
            if not isinstance(arguments, dict):
                if self.finish_reason == "length":
                    # Cut off by max_tokens mid-call (captured from vLLM 0.32.0): not a call
                    # the client could run; done_reason "length" says the reply was cut.
                    continue
                raise BackendError(f"vLLM returned tool call arguments that are not a JSON object: {call.arguments[:200]!r}")
            entry: dict[str, Any] = {"function": {"index": index, "name": call.name, "arguments": arguments}}
            if call.id:
                entry["id"] = call.id
            calls.append(entry)
        return calls

    def _metrics(self, now_ns: int) -> dict[str, int]:
        """Ollama's metrics from what the proxy can measure (docs/compatibility.md "Metrics").

        total: arrival → end; load: arrival → upstream request sent; prompt_eval:
        sent → first upstream chunk (vLLM's queueing and prefill); eval: first chunk →
        end. Each is at least 1 ns, since clients divide by them. Counts come from vLLM's
        usage and are left out when vLLM sent none: never invented.
        """
        sent = self.sent_ns or self.arrival_ns
        first = self.first_ns if self.first_ns is not None else now_ns
        metrics = {
            "total_duration": max(1, now_ns - self.arrival_ns),
            "load_duration": max(1, sent - self.arrival_ns),
            "prompt_eval_duration": max(1, first - sent),
            "eval_duration": max(1, now_ns - first),
        }
        if self.usage:
            if self.usage.get("prompt_tokens"):
                metrics["prompt_eval_count"] = self.usage["prompt_tokens"]
            if self.usage.get("completion_tokens"):
                metrics["eval_count"] = self.usage["completion_tokens"]
        return metrics


def fold(objects: list[dict[str, Any]], final: dict[str, Any], key: str) -> dict[str, Any]:
    """A non-streaming reply: the final object with every chunk's text concatenated.

    ``key`` is ``"message"`` for chat (content, thinking and tool calls live in the
    message) and ``""`` for generate (``response`` and ``thinking`` at the top level).
    """
    holder = final[key] if key else final
    text_key = "content" if key else "response"
    parts = [(o[key] if key else o) for o in objects]
    holder[text_key] = "".join(p.get(text_key, "") for p in parts) + holder.get(text_key, "")
    thinking = "".join(p.get("thinking", "") for p in parts) + holder.get("thinking", "")
    if thinking:
        holder["thinking"] = thinking
    logprobs = [entry for o in objects for entry in o.get("logprobs", ())]
    if logprobs:
        final["logprobs"] = logprobs  # top level, not inside message (Ollama's api/types.go)
    return final


def _of(value: Any, kind: type[_T]) -> _T:
    if not isinstance(value, kind):
        raise TypeError(kind.__name__)
    return value


def _usage(value: Any) -> dict[str, Any]:
    usage = _of(value, dict)
    for key in ("prompt_tokens", "completion_tokens"):
        count = usage.get(key)
        if count is not None and type(count) is not int:
            raise TypeError(key)
    return usage


def _ids(value: Any) -> list[int]:
    if not isinstance(value, list) or not all(type(i) is int for i in value):
        raise TypeError("token ids")
    return value


def _unexpected(event: bytes) -> BackendError:
    return bad_stream(f"vLLM sent a stream event of an unexpected shape: {event[:200]!r}")


def to_ollama_logprobs(logprobs: Any) -> list[dict[str, Any]] | None:
    """vLLM logprobs → Ollama's ``[{"token", "logprob", "bytes", "top_logprobs"}]``.

    Chat sends ``{"content": [entries]}``; completions send parallel lists
    ``tokens``/``token_logprobs``/``top_logprobs`` (a dict per token). vLLM lists the
    sampled token first in ``top_logprobs``, not sorted (captured from 0.32.0): sort them.
    """
    if not logprobs:
        return None
    if "content" in logprobs:
        entries = []
        for item in logprobs["content"] or ():
            entry = _entry(item["token"], item["logprob"], item.get("bytes"))
            if item.get("top_logprobs") is not None:
                top = [_entry(t["token"], t["logprob"], t.get("bytes")) for t in item["top_logprobs"]]
                entry["top_logprobs"] = sorted(top, key=lambda t: -t["logprob"])
            entries.append(entry)
        return entries or None
    tokens = logprobs.get("tokens") or []
    values = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or [None] * len(tokens)
    entries = []
    for token, value, top in zip(tokens, values, tops, strict=False):
        entry = _entry(token, value, None)
        if top:
            entry["top_logprobs"] = sorted((_entry(t, v, None) for t, v in top.items()), key=lambda t: -t["logprob"])
        entries.append(entry)
    return entries or None


def _entry(token: str, logprob: float | None, raw: list[int] | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"token": token, "logprob": logprob if logprob is not None else -9999.0}
    entry["bytes"] = raw if raw is not None else list(token.encode())
    return entry
