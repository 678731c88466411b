"""Added time to first token of one stream at a time: the proxy's per-request cost before the
upstream request, without queueing behind other streams.

Starts the fake vLLM (paced: the first token at once, the rest on its step clock, so the
first line is relayed before the stream ends, as in a real reply) and the proxy (one worker, pinned like run.py), then sends
``--requests`` single streams of ``--tokens`` tokens, alternating direct and proxy, each on a new
client connection, and prints TTFT p50/p90/p99 of each and the added median. ``--profile PATH``
records the proxy with py-spy (if installed) meanwhile (``--format``: speedscope, flamegraph, raw).

    python bench/ttft.py --requests 2000
    python bench/ttft.py --requests 5000 --profile /tmp/ttft.txt --format raw
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import load, relays


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def sample(port: int, shape: str, tokens: int) -> float | None:
    request = load.build_request(shape, relays.HOST, port, tokens)
    r = await load.one_stream(relays.HOST, port, request, shape == "openai", 0.0, 30.0)
    if r.error is not None or not r.events:
        return None
    return (r.t_first - r.t_start) / 1e6


async def measure(fake: int, proxy: int, n: int, tokens: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"direct": [], "proxy": []}
    for _ in range(20):  # warm-up: the pool, imports, caches
        await sample(proxy, "ollama", tokens)
    for i in range(n):
        for target in ("direct", "proxy") if i % 2 else ("proxy", "direct"):
            ms = await sample(fake if target == "direct" else proxy, "openai" if target == "direct" else "ollama", tokens)
            if ms is not None:
                out[target].append(ms)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--tokens", type=int, default=2)
    p.add_argument("--tick-ms", type=float, default=20.0, help="the fake's step clock; 0 = burst [%(default)s]")
    p.add_argument("--client-cpus", default="0")
    p.add_argument("--relay-cpus", default="1")
    p.add_argument("--profile", type=Path, default=None, help="py-spy record output")
    p.add_argument("--format", default="raw", help="py-spy output format [%(default)s]")
    p.add_argument("--proxy-arg", action="append", default=[], metavar="ARG")
    a = p.parse_args(argv)
    load.install_uvloop()
    pin = (os.cpu_count() or 1) >= 2
    if pin:
        os.sched_setaffinity(0, {int(c) for c in a.client_cpus.split(",")})
    workdir = Path(tempfile.mkdtemp(prefix="ollama-vllm-ttft-"))
    fake = relays.start_fake(workdir, a.tick_ms or None, a.client_cpus if pin else None)
    proxy = relays.start_proxy(workdir, fake.port, a.relay_cpus if pin else None, a.proxy_arg)
    spy = None
    try:
        if a.profile is not None and shutil.which("py-spy"):
            cmd = [
                "py-spy",
                "record",
                "--pid",
                str(proxy.pid),
                "--rate",
                "500",
                "--nonblocking",
                "--format",
                a.format,
                "-o",
                str(a.profile),
            ]
            spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cpu0 = proxy.cpu()
        res = asyncio.run(measure(fake.port, proxy.port, a.requests, a.tokens))
        cpu_us = (proxy.cpu() - cpu0).run_ns / 1000 / (a.requests + 20)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            spy.wait(30)
        proxy.stop()
        fake.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    for target, vals in res.items():
        print(
            f"{target:<6} n={len(vals)} TTFT p50 {pct(vals, 0.5):.3f} p90 {pct(vals, 0.9):.3f}"
            f" p99 {pct(vals, 0.99):.3f} ms mean {statistics.fmean(vals):.3f}"
        )
    added = pct(res["proxy"], 0.5) - pct(res["direct"], 0.5)
    print(
        f"added TTFT p50 {added:.3f} ms; proxy CPU {cpu_us:.0f} µs per request ({a.tokens} tokens, process only); load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
