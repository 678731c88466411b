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
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/capacity.py`: bench/ is sys.path[0]
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.capacity_client import Progress, calibrate_prompt, make_prompt, run_all, run_phase, stream_chat
from bench.capacity_cpu import CpuMeter
from bench.capacity_report import plot, render_table, summary_lines, write_json
from bench.capacity_stats import (
    RequestRecord,
    Target,
    Workload,
    batching_gain,
    build_levels,
    interactive_capacity,
    per_user_rates,
    percentile,
    plan,
    rate,
    ratio,
    summarize,
    units,
    words_for_tokens,
)

__all__ = [  # the split-out API, still reachable as bench.capacity.<name>
    "APIS", "CpuMeter", "Progress", "RequestRecord", "Target", "Workload", "batching_gain", "build_levels",
    "build_parser", "calibrate_prompt", "interactive_capacity", "main", "make_prompt", "parse_users",
    "per_user_rates", "percentile", "plan", "plot", "rate", "ratio", "render_table", "run_all", "run_phase",
    "stream_chat", "summarize", "summary_lines", "units", "words_for_tokens",
]  # fmt: skip

APIS = ("ollama", "openai")

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
        write_json(args.json, argv, started, targets, w, rounds, result, args.interactive, levels)
        print(f"wrote {args.json}")
    if args.plot:
        plot(args.plot, levels, targets, w, args.interactive)
        print(f"wrote {args.plot}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
