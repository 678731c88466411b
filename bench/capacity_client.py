"""Capacity report (bench/capacity.py): the streaming chat users and the workload runner.

Simulated users over aiohttp (Ollama or OpenAI streaming API), the progress bar on stderr,
the preflight / warm-up / prompt calibration and the measurement loop (``run_all``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import aiohttp

from bench.capacity_cpu import CpuMeter
from bench.capacity_stats import (
    RequestRecord,
    Target,
    Workload,
    compact_record,
    plan,
    ratio,
    summarize,
    units,
    words_for_tokens,
)

# ---------------------------------------------------------------------------------------
# Workload
# ---------------------------------------------------------------------------------------

_STORY = (
    "the quick brown fox jumps over a lazy dog while seven curious engineers measure how many "
    "patient users one shared server can answer at a comfortable reading speed before the "
    "queue grows long and every reply starts to crawl across the screen like cold honey on "
    "a winter morning in the old lab near river bank station"
)
_WORDS = tuple(_STORY.split())


def make_prompt(words: int, user: int, turn: int, marker: str = "") -> str:
    """A deterministic text of about ``words`` words for (user, turn). ``marker`` leads the text,
    so prompts of different phases share no prefix (no prefix-cache hits across phases)."""
    head = f"{marker} User {user} turn {turn}: please continue this story.".strip().split()
    state = (user * 7919 + turn * 104729 + 12345) & 0x7FFFFFFF
    body = []
    for _ in range(max(0, words - len(head))):
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF  # a fixed LCG: same text every run
        body.append(_WORDS[(state >> 8) % len(_WORDS)])
    return " ".join(head + body)


def build_body(target: Target, w: Workload, prompt: str, max_tokens: int) -> tuple[str, dict[str, Any]]:
    messages = [{"role": "user", "content": prompt}]
    if target.api == "ollama":
        options: dict[str, Any] = {"num_predict": max_tokens}
        if w.seed is not None:
            options["seed"] = w.seed
        if w.temperature is not None:
            options["temperature"] = w.temperature
        return "/api/chat", {"model": target.model, "messages": messages, "stream": True, "options": options}
    body: dict[str, Any] = {"model": target.model, "messages": messages, "stream": True, "max_tokens": max_tokens,
                            "stream_options": {"include_usage": True}}  # fmt: skip
    if w.seed is not None:
        body["seed"] = w.seed
    if w.temperature is not None:
        body["temperature"] = w.temperature
    return "/v1/chat/completions", body


async def stream_chat(session: aiohttp.ClientSession, target: Target, w: Workload, prompt: str, max_tokens: int,
                      rec: RequestRecord, t0: float) -> None:  # fmt: skip
    """Send one streamed chat turn and fill ``rec`` (times relative to ``t0``). Never raises."""
    path, body = build_body(target, w, prompt, max_tokens)
    now = time.perf_counter
    rec.t_send = now() - t0
    server_tokens: int | None = None
    finished = False
    try:
        async with session.post(target.base + path, json=body,
                                timeout=aiohttp.ClientTimeout(total=w.timeout)) as resp:  # fmt: skip
            if resp.status != 200:
                text = (await resp.text())[:200]
                rec.error = f"HTTP {resp.status}: {text.strip()}"
                return
            async for raw in resp.content:
                line = raw.strip()
                if not line:
                    continue
                if target.api == "openai":
                    if not line.startswith(b"data:"):
                        continue
                    line = line[5:].strip()
                    if line == b"[DONE]":
                        finished = True
                        break
                obj = json.loads(line)
                if "error" in obj:
                    err = obj["error"]
                    rec.error = "error event: " + str(err.get("message", err) if isinstance(err, dict) else err)[:200]
                    return
                if target.api == "ollama":
                    msg = obj.get("message") or {}
                    if msg.get("content") or msg.get("thinking") or msg.get("tool_calls"):
                        rec.chunks += 1
                        if rec.t_first is None:
                            rec.t_first = now() - t0
                    if obj.get("done"):
                        finished = True
                        rec.done_reason = obj.get("done_reason")
                        if "eval_count" in obj:
                            server_tokens = int(obj["eval_count"])
                        if "prompt_eval_count" in obj:
                            rec.prompt_tokens = int(obj["prompt_eval_count"])
                        rec.server = {k: int(v) for k, v in obj.items() if k.endswith("_duration")}
                        break
                else:
                    for choice in obj.get("choices") or ():
                        delta = choice.get("delta") or {}
                        if delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning") \
                                or delta.get("tool_calls"):  # fmt: skip
                            rec.chunks += 1
                            if rec.t_first is None:
                                rec.t_first = now() - t0
                        if choice.get("finish_reason"):
                            rec.done_reason = choice["finish_reason"]
                    usage = obj.get("usage")
                    if usage:
                        server_tokens = int(usage.get("completion_tokens") or 0)
                        if usage.get("prompt_tokens") is not None:
                            rec.prompt_tokens = int(usage["prompt_tokens"])
            if not finished:
                rec.error = "stream ended without its final chunk"
    except TimeoutError:
        rec.error = f"timeout after {w.timeout:g}s"
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        rec.error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        rec.t_end = now() - t0
        if server_tokens is not None:
            rec.tokens = server_tokens
            rec.tokens_source = "eval_count" if target.api == "ollama" else "usage"
        else:
            rec.tokens = rec.chunks
            rec.tokens_source = "chunks"


# ---------------------------------------------------------------------------------------
# Progress (stderr, plain text)
# ---------------------------------------------------------------------------------------


class Progress:
    """``[phase 3/12] users 4 · proxy concurrent r1  ########------  9/16 req  0 err  3.1s``.

    Redrawn in place (at most 10×/s) on a terminal; one line per finished phase otherwise."""

    WIDTH = 24

    def __init__(self, total_phases: int, enabled: bool = True, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.total_phases = total_phases
        self.phase = 0
        self.title = ""
        self.total = self.done = self.errors = 0
        self.t0 = 0.0
        self._last_draw = 0.0

    def start(self, title: str, total: int) -> None:
        self.phase += 1
        self.title, self.total, self.done, self.errors = title, total, 0, 0
        self.t0 = time.perf_counter()
        self._draw(force=True)

    def tick(self, failed: bool) -> None:
        self.done += 1
        self.errors += int(failed)
        self._draw(force=self.done == self.total)

    def line(self) -> str:
        filled = self.WIDTH * self.done // max(1, self.total)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        return (f"[phase {self.phase}/{self.total_phases}] {self.title}  {bar} {self.done}/{self.total} req"
                f"  {self.errors} err  {time.perf_counter() - self.t0:.1f}s")  # fmt: skip

    def _draw(self, force: bool = False) -> None:
        if not self.tty:
            return
        t = time.perf_counter()
        if force or t - self._last_draw >= 0.1:
            self._last_draw = t
            self.stream.write("\r\033[K" + self.line())
            self.stream.flush()

    def finish(self) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K" + self.line() + "\n")
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        if self.enabled:
            self.stream.write(("\r\033[K" if self.tty else "") + text + "\n")
            self.stream.flush()


# ---------------------------------------------------------------------------------------
# Runner
# ---------------------------------------------------------------------------------------


async def run_phase(session: aiohttp.ClientSession, target: Target, w: Workload, users: int, sequential: bool,
                    marker: str, progress: Progress) -> tuple[list[RequestRecord], float]:  # fmt: skip
    """``users`` users doing their turns together; ``sequential`` serialises the requests through
    one FIFO queue (Ollama's default). Returns the records and the phase's wall time."""
    gate = asyncio.Lock() if sequential else None  # asyncio.Lock wakes waiters in FIFO order
    records: list[RequestRecord] = []
    t0 = time.perf_counter()

    async def one_user(user: int) -> None:
        for turn in range(w.requests_per_user):
            if turn and w.think_time > 0:
                await asyncio.sleep(w.think_time)
            rec = RequestRecord(user=user, turn=turn, t_queue=time.perf_counter() - t0)
            prompt = make_prompt(w.prompt_words or w.prompt_tokens, user, turn, marker)
            if gate is None:
                await stream_chat(session, target, w, prompt, w.output_tokens, rec, t0)
            else:
                async with gate:
                    await stream_chat(session, target, w, prompt, w.output_tokens, rec, t0)
            records.append(rec)
            progress.tick(rec.error is not None)

    await asyncio.gather(*(one_user(u) for u in range(users)))
    wall = time.perf_counter() - t0
    records.sort(key=lambda r: (r.user, r.turn))
    return records, wall


async def preflight(session: aiohttp.ClientSession, target: Target, timeout: float = 10) -> str | None:
    """None if the target lists the model, else a one-line reason."""
    path = "/api/tags" if target.api == "ollama" else "/v1/models"
    try:
        async with session.get(target.base + path, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                return f"GET {target.base}{path}: HTTP {resp.status}"
            data = await resp.json(content_type=None)
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
        return f"GET {target.base}{path}: {type(exc).__name__}: {exc}"
    if target.api == "ollama":
        names = [m.get("name") or m.get("model") for m in data.get("models", [])]
        wanted = {target.model.lower(), f"{target.model.lower()}:latest"}
        found = any(n and n.lower() in wanted for n in names)
    else:
        names = [m.get("id") for m in data.get("data", [])]
        found = target.model in names
    return None if found else f"{target.label}: model {target.model!r} not served at {target.base} (has {names})"


async def warm_up(session: aiohttp.ClientSession, target: Target, w: Workload, n: int) -> list[str]:
    """n concurrent 8-token requests (opens connections, wakes the server); returns errors."""
    t0 = time.perf_counter()
    recs = [RequestRecord(user=i, turn=0, t_queue=0.0) for i in range(n)]
    await asyncio.gather(*(stream_chat(session, target, w, make_prompt(16, i, 0, "warm-up"), 8, r, t0)
                           for i, r in enumerate(recs)))  # fmt: skip
    return [r.error for r in recs if r.error]


async def calibrate_prompt(session: aiohttp.ClientSession, target: Target, w: Workload) -> tuple[int, list[tuple[int, int]]]:
    """Ask the server how many tokens 32- and 128-word prompts are (1-token replies) and pick the
    word count for ``w.prompt_tokens`` tokens."""
    probes = []
    for words in (32, 128):
        r = RequestRecord(user=0, turn=0, t_queue=0.0)
        await stream_chat(session, target, w, make_prompt(words, 0, 0, "[calibrate]"), 1, r, time.perf_counter())
        if r.error or not r.prompt_tokens:
            raise SystemExit(f"{target.label}: cannot calibrate the prompt: {r.error or 'no prompt token count'}")
        probes.append((words, r.prompt_tokens))
    return words_for_tokens(w.prompt_tokens, probes), probes


async def run_all(targets: list[Target], w: Workload, rounds: int, sequential: bool, progress: Progress,
                  meter: CpuMeter | None = None, calibrate: bool = False, max_noise: float | None = None,
                  max_retries: int = 0) -> dict[str, Any]:  # fmt: skip
    meter = meter or CpuMeter({})
    compare = len(targets) > 1
    phases = plan(w.users, rounds, compare, sequential)
    progress.total_phases = len(phases)
    runs: list[dict[str, Any]] = []
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        for t in targets:
            reason = await preflight(session, t)
            if reason:
                raise SystemExit(reason)
        for t in targets:
            errors = await warm_up(session, t, w, max(w.users))
            if errors:
                raise SystemExit(f"{t.label}: warm-up failed: {errors[0]}")
        calibration = None
        if calibrate:
            w.prompt_words, probes = await calibrate_prompt(session, targets[0], w)
            calibration = {"probes_words_tokens": probes, "prompt_words": w.prompt_words}
            progress.note(f"calibrated prompt: {w.prompt_words} words ≈ {w.prompt_tokens} tokens "
                          f"(probes words→tokens {probes})")  # fmt: skip
        index = 0
        for unit in units(phases):
            for attempt in range(max_retries + 1):
                batch: list[dict[str, Any]] = []
                for users, which, rnd in unit:
                    target = targets[1] if which == "B" else targets[0]
                    mode = "sequential" if which == "seq" else "concurrent"
                    title = f"users {users} · {target.label} {mode}"
                    title += f" r{rnd + 1}" if mode == "concurrent" and rounds > 1 else ""
                    title += f" (retry {attempt}: noisy box)" if attempt else ""
                    progress.start(title, users * w.requests_per_user)
                    before = meter.sample()
                    started = time.time()
                    records, wall = await run_phase(session, target, w, users, which == "seq", f"[{index}]", progress)
                    cpu = CpuMeter.delta(before, meter.sample())
                    index += 1
                    progress.finish()
                    summary = summarize(records, wall)
                    summary["cpu_s"] = cpu
                    summary["cpu_us_per_token"] = {k: 1e6 * v / summary["tokens"] for k, v in cpu.items()
                                                   if summary["tokens"] and k not in ("box_busy", "box_total")
                                                   and not k.startswith("wait:")}  # fmt: skip
                    summary["runq_wait_share"] = {k[5:]: v / wall for k, v in cpu.items() if k.startswith("wait:")}
                    summary["other_cpu_share"] = ratio(cpu["other"], cpu["box_total"])
                    batch.append({"users": users, "target": target.label, "mode": mode, "round": rnd, "attempt": attempt,
                                  "discarded": False, "started_unix": started, "summary": summary,
                                  "records": [compact_record(r) for r in records]})  # fmt: skip
                runs.extend(batch)
                noise = max((b["summary"]["other_cpu_share"] or 0.0) for b in batch)
                if max_noise is None or noise <= max_noise or attempt == max_retries:
                    break
                for b in batch:  # kept in the JSON, left out of the figures
                    b["discarded"] = True
                progress.total_phases += len(unit)
                progress.note(f"  {100 * noise:.0f}% of the box was busy with other processes (> {100 * max_noise:.0f}%): "
                              "measuring again")  # fmt: skip
    return {"runs": runs, "calibration": calibration}
