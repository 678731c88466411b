"""How many of N concurrent client streams reach the upstream at once, per proxy worker count.

Starts the fake vLLM (paced, so every stream lasts ``--tokens`` × 20 ms), then for each
``--workers`` value a proxy with that many workers, and sends ``-c`` streams at once with each
client kind, in rounds whose order rotates. The fake counts the streams open at the same time
(``peak_active``); a relay or client that holds streams back shows as a peak below ``-c``.

Client kinds:
  ollama-async    the official ``ollama`` Python client: one ``AsyncClient``, ``asyncio.gather``
  ollama-threads  the official client, one ``ollama.Client`` per thread
  aiohttp         one ``aiohttp.ClientSession`` (no connection limit), POST /api/chat
  httpx-direct    straight to the fake's /v1/chat/completions with one ``httpx.AsyncClient``
                  (the library under ``ollama``), the same for every worker count

``--hog N`` runs N busy-looping processes beside it, as vLLM-CPU keeps the cores busy on a box
that serves it. Prints median [min–max] of the peak over rounds, and the time until the last
stream's first token.

    python bench/concurrency.py -c 150 --workers 1,2 --rounds 5 --hog 2
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import httpx
import ollama

from bench import relays

KINDS = ("ollama-async", "ollama-threads", "aiohttp", "httpx-direct")
MESSAGES = [{"role": "user", "content": "Write a long story."}]


def _hog() -> None:
    while True:
        pass


def _ollama_threads(url: str, c: int, tokens: int) -> list[float]:
    firsts: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(c)

    def one() -> None:
        client = ollama.Client(host=url)
        start.wait()
        got = False
        for _ in client.chat(model="bench", messages=MESSAGES, stream=True, options={"num_predict": tokens}):
            if not got:
                got = True
                with lock:
                    firsts.append(time.monotonic())

    threads = [threading.Thread(target=one) for _ in range(c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return firsts


async def _ollama_async(url: str, c: int, tokens: int) -> list[float]:
    client = ollama.AsyncClient(host=url)
    firsts: list[float] = []

    async def one() -> None:
        got = False
        async for _ in await client.chat(model="bench", messages=MESSAGES, stream=True, options={"num_predict": tokens}):
            if not got:
                got = True
                firsts.append(time.monotonic())

    await asyncio.gather(*(one() for _ in range(c)))
    return firsts


async def _aiohttp(url: str, c: int, tokens: int) -> list[float]:
    firsts: list[float] = []
    body = {"model": "bench", "messages": MESSAGES, "stream": True, "options": {"num_predict": tokens}}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one() -> None:
            async with session.post(f"{url}/api/chat", json=body) as resp:
                got = False
                async for _ in resp.content:
                    if not got:
                        got = True
                        firsts.append(time.monotonic())

        await asyncio.gather(*(one() for _ in range(c)))
    return firsts


async def _httpx_direct(url: str, c: int, tokens: int) -> list[float]:
    firsts: list[float] = []
    body = {"model": "bench", "messages": MESSAGES, "stream": True, "max_tokens": tokens}
    async with httpx.AsyncClient(base_url=url, timeout=None) as client:

        async def one() -> None:
            async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                got = False
                async for _ in resp.aiter_lines():
                    if not got:
                        got = True
                        firsts.append(time.monotonic())

        await asyncio.gather(*(one() for _ in range(c)))
    return firsts


def one_round(kind: str, url: str, fake_port: int, c: int, tokens: int) -> dict[str, Any]:
    relays.http_get(fake_port, "/bench/reset-peak")
    t0 = time.monotonic()
    if kind == "ollama-threads":
        firsts = _ollama_threads(url, c, tokens)
    else:
        run = {"ollama-async": _ollama_async, "aiohttp": _aiohttp, "httpx-direct": _httpx_direct}[kind]
        firsts = asyncio.run(run(url, c, tokens))
    stats = json.loads(relays.http_get(fake_port, "/bench/stats")[1])
    return {"peak": stats["peak_active"], "last_first_token_s": round(max(firsts) - t0, 3) if firsts else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--streams", type=int, default=150)
    p.add_argument("--tokens", type=int, default=200, help="tokens per stream (20 ms each)")
    p.add_argument("--workers", default="1,2", help="comma-separated proxy worker counts")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--hog", type=int, default=0, help="busy-looping processes beside the proxy (vLLM-CPU's load)")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    kinds = [k for k in a.kinds.split(",") if k]
    counts = [int(w) for w in a.workers.split(",") if w]
    workdir = Path(tempfile.mkdtemp(prefix="ollama-vllm-concurrency-"))
    fake = relays.start_fake(workdir, 20.0, None)
    proxies: dict[int, relays.Proc] = {}
    hogs = [multiprocessing.Process(target=_hog, daemon=True) for _ in range(a.hog)]
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        for n in counts:
            proxies[n] = relays.start_proxy(workdir, fake.port, None, ["--workers", str(n)])
        for h in hogs:
            h.start()
        cases = [("direct", k) for k in kinds if k == "httpx-direct"]
        cases += [(f"workers={n}", k) for n in counts for k in kinds if k != "httpx-direct"]
        orders = list(itertools.permutations(range(len(cases)))) if len(cases) <= 6 else None
        for rnd in range(a.rounds):
            order = list(orders[rnd % len(orders)]) if orders else [(i + rnd) % len(cases) for i in range(len(cases))]
            for i in order:
                where, kind = cases[i]
                url = (
                    f"http://{relays.HOST}:{fake.port}"
                    if where == "direct"
                    else f"http://{relays.HOST}:{proxies[int(where.split('=')[1])].port}"
                )
                r = one_round(kind, url, fake.port, a.streams, a.tokens)
                r["loadavg_1m"] = os.getloadavg()[0]
                results.setdefault(f"{where} {kind}", []).append(r)
                print(f"round {rnd + 1}/{a.rounds} {where:<10} {kind:<15} peak {r['peak']:>4}/{a.streams}"
                      f"  last first token {r['last_first_token_s']} s  load {r['loadavg_1m']:.2f}", flush=True)  # fmt: skip
    finally:
        for h in hogs:
            h.terminate()
        for pr in proxies.values():
            pr.stop()
        fake.stop()
    print(f"\n{a.streams} streams × {a.tokens} tokens, {a.rounds} rounds, hog={a.hog}, {os.cpu_count()} CPUs, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    print("case                         peak at the upstream, median [min–max]   last first token s, median")
    for case, rs in results.items():
        peaks = [r["peak"] for r in rs]
        lasts = [r["last_first_token_s"] for r in rs if r["last_first_token_s"] is not None]
        last = f"{statistics.median(lasts):.2f}" if lasts else "-"
        print(f"{case:<28} {statistics.median(peaks):>6.0f} [{min(peaks)}–{max(peaks)}]{'':<26} {last}")
    if a.json:
        a.json.write_text(json.dumps({"args": vars(a), "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
