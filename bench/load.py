"""Streaming load client: N concurrent chat streams over raw asyncio Protocols.

Shapes:
  ollama  POST /api/chat {"stream":true,"options":{"num_predict":K}}       reads NDJSON lines
  openai  POST /v1/chat/completions {"stream":true,"max_tokens":K,...}     reads SSE `data:` events
The HTTP body is de-chunked before events are split (relays re-chunk, so delimiters cannot be counted
in raw bytes). A content event is one whose content is non-empty; its `@<monotonic_ns>` suffix, written
by fake_vllm.py on the same host, gives the per-event relay delay.

Per run: events/s, TTFT (connect+send to first content event), per-event delay (receive - send stamp),
inter-arrival gap, and failed / short streams.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

import orjson

SHAPES = ("ollama", "openai")
STALL_MARK = "[[stall]]"


@dataclass
class StreamResult:
    status: int = 0
    events: int = 0  # content events
    done: bool = False  # saw the terminal event ([DONE] or "done":true)
    error: str | None = None
    bad_stamps: int = 0
    t_start: int = 0
    t_first: int = 0
    t_end: int = 0
    delays: array = field(default_factory=lambda: array("q"))
    gaps: array = field(default_factory=lambda: array("q"))


def build_request(shape: str, host: str, port: int, tokens: int, model: str = "bench", stall: bool = False) -> bytes:
    text = "Write a long story." + (STALL_MARK if stall else "")
    messages = [{"role": "user", "content": text}]
    if shape == "ollama":
        path = "/api/chat"
        body: dict[str, Any] = {"model": model, "messages": messages, "stream": True, "options": {"num_predict": tokens}}
    elif shape == "openai":
        path = "/v1/chat/completions"
        body = {
            "model": model,
            "messages": messages,
            "stream": True,
            "max_tokens": tokens,
            "stream_options": {"include_usage": True},
        }
    else:
        raise ValueError(f"unknown shape {shape!r}")
    payload = orjson.dumps(body)
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: application/x-ndjson, text/event-stream\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload


class StreamClient(asyncio.Protocol):
    """Parses one HTTP/1.1 response: status, headers, chunked / length / close-delimited body."""

    def __init__(self, request: bytes, sse: bool, result: StreamResult, done: asyncio.Future[None]) -> None:
        self.request = request
        self.sse = sse
        self.r = result
        self.fut = done
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()  # raw bytes not yet parsed
        self.lines = bytearray()  # de-chunked body not yet split into lines
        self.head_done = False
        self.chunked = False
        self.remaining = -1  # content-length left; -1 = until close
        self.chunk_left = 0  # bytes left in the current chunk (+2 for its CRLF)
        self.sse_data: list[bytes] = []
        self.last_recv = 0
        self.now = 0
        self.error_body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.fut.done():
            if self.head_done and not self.chunked and self.remaining < 0:
                self._flush_tail()
                self._finish(None)
            else:
                self._finish(f"connection lost: {exc or 'EOF'}")

    def close(self, error: str) -> None:
        if not self.fut.done():
            self._finish(error)
        if self.transport is not None:
            self.transport.close()

    def _finish(self, error: str | None) -> None:
        r = self.r
        r.t_end = time.monotonic_ns()
        if error is None and r.status != 200:
            error = f"HTTP {r.status}: {bytes(self.error_body[:200]).decode('utf-8', 'replace')}"
        if r.error is None:
            r.error = error
        if not self.fut.done():
            self.fut.set_result(None)
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.now = time.monotonic_ns()
        self.buf += data
        if not self.head_done:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            del self.buf[: end + 4]
            try:
                self.r.status = int(lines[0].split(" ", 2)[1])
            except (IndexError, ValueError):
                return self.close(f"bad status line {lines[0]!r}")
            for line in lines[1:]:
                k, _, v = line.partition(":")
                k = k.strip().lower()
                if k == "transfer-encoding" and "chunked" in v.lower():
                    self.chunked = True
                elif k == "content-length":
                    self.remaining = int(v)
            self.head_done = True
        if self.chunked:
            self._dechunk()
        else:
            if self.remaining >= 0:
                take = min(self.remaining, len(self.buf))
                self._body(bytes(self.buf[:take]))
                self.remaining -= take
                del self.buf[:take]
                if self.remaining == 0:
                    self._flush_tail()
                    self._finish(None)
            else:
                self._body(bytes(self.buf))
                self.buf.clear()

    def _dechunk(self) -> None:
        buf = self.buf
        pos = 0
        n = len(buf)
        while pos < n:
            if self.chunk_left > 0:
                take = min(self.chunk_left, n - pos)
                data_take = min(take, self.chunk_left - 2)  # exclude the trailing CRLF
                if data_take > 0:
                    self._body(bytes(buf[pos : pos + data_take]))
                self.chunk_left -= take
                pos += take
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            try:
                size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
            except ValueError:
                msg = f"bad chunk header {bytes(buf[pos:eol])[:40]!r}"
                del buf[:]
                return self.close(msg)
            if size == 0:
                del buf[:]
                self._flush_tail()
                return self._finish(None)
            self.chunk_left = size + 2
            pos = eol + 2
        del buf[:pos]

    def _body(self, data: bytes) -> None:
        if self.r.status != 200:
            self.error_body += data[:1000]
            return
        lines = self.lines
        lines += data
        start = 0
        while True:
            nl = lines.find(b"\n", start)
            if nl < 0:
                break
            self._line(bytes(lines[start:nl]))
            start = nl + 1
        del lines[:start]

    def _flush_tail(self) -> None:
        if self.lines:
            self._line(bytes(self.lines))
            self.lines.clear()
        if self.sse_data:
            self._line(b"")

    def _line(self, line: bytes) -> None:
        if self.sse:
            line = line.rstrip(b"\r")
            if line:
                if line.startswith(b"data:"):
                    self.sse_data.append(line[5:].lstrip(b" "))
                return  # comments and other fields are ignored, as SSE says
            if not self.sse_data:
                return
            payload = b"\n".join(self.sse_data)
            self.sse_data = []
            if payload == b"[DONE]":
                self.r.done = True
                return
            self._event(payload, True)
        elif line.strip():
            self._event(line, False)

    def _event(self, payload: bytes, sse: bool) -> None:
        r = self.r
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            r.error = r.error or f"unparsable event {payload[:80]!r}"
            return
        if not isinstance(obj, dict):
            r.error = r.error or f"unexpected event {payload[:80]!r}"
            return
        if "error" in obj:
            r.error = r.error or f"error event: {str(obj['error'])[:200]}"
            return
        if sse:
            choices = obj.get("choices") or ()
            content = (choices[0].get("delta") or {}).get("content") if choices else None
        else:
            if obj.get("done"):
                r.done = True
            msg = obj.get("message")
            content = msg.get("content") if isinstance(msg, dict) else obj.get("response")
        if not content:
            return
        now = self.now
        r.events += 1
        if r.events == 1:
            r.t_first = now
        else:
            r.gaps.append(now - self.last_recv)
        self.last_recv = now
        at = content.rfind("@")
        try:
            r.delays.append(now - int(content[at + 1 :]))
        except ValueError:
            r.bad_stamps += 1


async def one_stream(host: str, port: int, request: bytes, sse: bool, delay_s: float, timeout_s: float) -> StreamResult:
    if delay_s > 0:
        await asyncio.sleep(delay_s)
    loop = asyncio.get_running_loop()
    r = StreamResult()
    fut: asyncio.Future[None] = loop.create_future()
    r.t_start = time.monotonic_ns()
    try:
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: StreamClient(request, sse, r, fut), host, port), timeout_s
        )
    except (OSError, TimeoutError) as e:
        r.error = f"connect: {e!r}"
        r.t_end = time.monotonic_ns()
        return r
    try:
        await asyncio.wait_for(asyncio.shield(fut), timeout_s)
    except TimeoutError:
        proto.close(f"timeout after {timeout_s:.0f}s")
    except asyncio.CancelledError:
        proto.close("cancelled")
        raise
    return r


def percentile(sorted_vals: Any, q: float) -> float | None:
    n = len(sorted_vals)
    if n == 0:
        return None
    return float(sorted_vals[min(n - 1, int(q * n))])


def summarize(results: list[StreamResult], tokens: int, t0: int, t1: int) -> dict[str, Any]:
    events = sum(r.events for r in results)
    ttft = sorted(r.t_first - r.t_start for r in results if r.events)
    delays: list[int] = sorted(d for r in results for d in r.delays)
    gaps: list[int] = sorted(g for r in results for g in r.gaps)
    failed = [r for r in results if r.error is not None or r.status != 200]
    short = [r for r in results if r.error is None and r.status == 200 and (r.events < tokens or not r.done)]
    wall = max(t1 - t0, 1) / 1e9
    ms = 1e-6

    def pct(v: list[int], q: float) -> float | None:
        p = percentile(v, q)
        return None if p is None else round(p * ms, 3)

    errors: dict[str, int] = {}
    for r in failed:
        key = (r.error or f"HTTP {r.status}")[:160]
        errors[key] = errors.get(key, 0) + 1
    return {
        "streams": len(results),
        "tokens": tokens,
        "events": events,
        "expected_events": len(results) * tokens,
        "wall_s": round(wall, 4),
        "events_per_s": round(events / wall, 1),
        "ttft_p50_ms": pct(ttft, 0.50),
        "ttft_p99_ms": pct(ttft, 0.99),
        "delay_p50_ms": pct(delays, 0.50),
        "delay_p99_ms": pct(delays, 0.99),
        "gap_p50_ms": pct(gaps, 0.50),
        "gap_p99_ms": pct(gaps, 0.99),
        "failed": len(failed),
        "short": len(short),
        "short_events_missing": sum(tokens - r.events for r in short if r.events < tokens),
        "bad_stamps": sum(r.bad_stamps for r in results),
        "errors": errors,
    }


async def run_load(
    host: str,
    port: int,
    *,
    streams: int,
    tokens: int,
    shape: str = "openai",
    stagger_s: float = 0.0,
    timeout_s: float | None = None,
    model: str = "bench",
    stall: bool = False,
) -> dict[str, Any]:
    """Run `streams` concurrent streams of `tokens` tokens each; start times spread over `stagger_s`."""
    request = build_request(shape, host, port, tokens, model, stall)
    if timeout_s is None:
        timeout_s = 60.0 + stagger_s + tokens * 0.05
    step = stagger_s / streams if streams > 1 else 0.0
    t0 = time.monotonic_ns()
    results = await asyncio.gather(
        *(one_stream(host, port, request, shape == "openai", i * step, timeout_s) for i in range(streams))
    )
    t1 = max((r.t_end for r in results), default=time.monotonic_ns())
    return summarize(list(results), tokens, t0, t1)


class HeldStreams:
    """Open streams and keep them open until close(); used for idle-stream memory measurements."""

    def __init__(self) -> None:
        self.protos: list[StreamClient] = []
        self.results: list[StreamResult] = []

    async def open(
        self, host: str, port: int, n: int, shape: str, tokens: int = 64, stall: bool = True, stagger_s: float = 0.0
    ) -> None:
        loop = asyncio.get_running_loop()
        request = build_request(shape, host, port, tokens, stall=stall)
        for _ in range(n):
            r = StreamResult(t_start=time.monotonic_ns())
            proto = StreamClient(request, shape == "openai", r, loop.create_future())
            await loop.create_connection(lambda p=proto: p, host, port)  # type: ignore[misc]
            self.protos.append(proto)
            self.results.append(r)
            if stagger_s:
                await asyncio.sleep(stagger_s / n)

    def close(self) -> None:
        for p in self.protos:
            p.close("closed by client")


def install_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def _main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("-c", "--streams", type=int, default=16)
    p.add_argument("-k", "--tokens", type=int, default=200, help="tokens per stream (num_predict / max_tokens)")
    p.add_argument("--shape", choices=SHAPES, default="openai")
    p.add_argument("--stagger-s", type=float, default=0.0, help="spread stream starts over this many seconds")
    p.add_argument("--timeout-s", type=float, default=None)
    p.add_argument("--model", default="bench")
    p.add_argument("--no-uvloop", action="store_true")
    a = p.parse_args()
    if not a.no_uvloop:
        install_uvloop()
    res = asyncio.run(
        run_load(
            a.host,
            a.port,
            streams=a.streams,
            tokens=a.tokens,
            shape=a.shape,
            stagger_s=a.stagger_s,
            timeout_s=a.timeout_s,
            model=a.model,
        )
    )
    json.dump(res, sys.stdout, indent=2)
    print()
    sys.exit(1 if res["failed"] or res["short"] else 0)


if __name__ == "__main__":
    _main()
